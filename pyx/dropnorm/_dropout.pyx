# cython: language_level=3
"""Dropout: Philox4x32-10 keep masks and wrappers over the C kernels.

Decision i (element i in flat C order, or the pair (n, c) as i = n*C + c in
channel dropout) is a pure function of (seed, stream, i): with
key = (lo32(seed), hi32(seed)) and counter = (lo32(i//4), hi32(i//4),
lo32(stream), hi32(stream)), i is dropped iff word i % 4 of
Philox4x32-10(counter, key) is < floor(p * 2**32); p == 1 drops everything.
The same call gives the same mask for any thread count, and backward can
regenerate it from (seed, stream) instead of storing it.

Masks are packed keep bits (1 = kept), LSB first in each byte, (bits + 7)//8
uint8 values, as ``np.packbits(keep, bitorder="little")``.

The default generator: a call with seed=None and stream=None (the default)
takes a fresh (seed, stream) from one process-wide generator, whose state is
a seed and a counter: draw k (k = 0, 1, 2, ...) is (seed, k), so seedless
calls get the masks of one Dropout layer with that seed, never the same one
twice. The seed comes from the OS (os.urandom) at import;
``manual_seed(n)`` sets it to n and the counter to 0, which makes every
later draw, and so every mask, repeatable. A layer made without a seed
takes one draw k and derives its own seed from it (words 0 and 1 of
Philox4x32-10 with key (lo32(seed), hi32(seed)) and counter (lo32(k),
hi32(k), 2**32 - 1, 2**32 - 1)), whose streams are then its own. A draw is
a lock and an increment; the lock is held for those few instructions only,
so threads may draw concurrently. After fork() a child whose generator was
seeded from the OS takes a new seed from the OS (so that worker processes
do not repeat each other's masks); one seeded by manual_seed keeps its
state, so that it stays repeatable.
"""

from cpython.pythread cimport (
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_release_lock,
    PyThread_type_lock,
)
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t

cimport numpy as cnp

from dropnorm._checks cimport (
    as_array,
    as_dropout_mode,
    as_flag,
    as_int,
    as_mask,
    as_probability,
    as_uint,
    output_like,
    tensor_extents,
)
from dropnorm._spans cimport Spans, spans_of
from dropnorm.libdropnorm cimport *

import os

import numpy as np

from dropnorm._checks import as_count, as_words
from dropnorm._runtime import raise_status

cnp.import_array()


# ---- The default generator (see the module docstring) ----------------------

cdef PyThread_type_lock _gen_lock = NULL
cdef uint64_t _gen_seed = 0     # the seed of every draw
cdef uint64_t _gen_next = 0     # the stream of the next draw
cdef bint _gen_manual = False   # set by manual_seed (kept across fork)


cdef int _gen_new_lock() except -1:
    global _gen_lock
    _gen_lock = PyThread_allocate_lock()
    if _gen_lock == NULL:
        raise MemoryError("dropnorm: cannot allocate the default generator's lock")
    return 0


cdef inline void _gen_draw(uint64_t *seed, uint64_t *stream) noexcept:
    """The next (seed, stream) of the default generator. The lock is held
    for a few loads and stores: no Python code, no GIL release, no kernel."""
    global _gen_next
    PyThread_acquire_lock(_gen_lock, WAIT_LOCK)
    seed[0] = _gen_seed
    stream[0] = _gen_next
    _gen_next += 1
    PyThread_release_lock(_gen_lock)


cdef void _gen_set(uint64_t seed, bint manual) noexcept:
    """Seed the default generator; its counter restarts at 0."""
    global _gen_seed, _gen_next, _gen_manual
    PyThread_acquire_lock(_gen_lock, WAIT_LOCK)
    _gen_seed = seed
    _gen_next = 0
    _gen_manual = manual
    PyThread_release_lock(_gen_lock)


def _os_seed():
    """64 bits of OS entropy as an int."""
    return int.from_bytes(os.urandom(8), "little")


def _gen_after_fork_in_child():
    """A forked child: a new lock (one held by another thread at the fork
    would stay held), and a new seed from the OS unless manual_seed set it."""
    _gen_new_lock()
    if not _gen_manual:
        _gen_set(_os_seed(), False)


_gen_new_lock()
_gen_set(_os_seed(), False)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_gen_after_fork_in_child)


def manual_seed(seed):
    """Seed the default generator of dropnorm, as ``torch.manual_seed`` does.

    seed: an integer in [0, 2**64) (not bool). From here on, dropout calls
    without a seed (``dropout(x, p)``, ``dropout_mask(n, p)``), ``draw_seed()``
    and layers made without a seed (``Dropout(p)``) draw from a sequence that
    depends only on seed and on the order of the draws, so a program that
    calls ``manual_seed(n)`` first gives the same masks on every run, for any
    thread count. The draws are (seed, 0), (seed, 1), ...: right after
    ``manual_seed(n)``, ``dropout(x, p)`` is ``dropout(x, p, seed=n, stream=0)``.
    Returns None.
    """
    _gen_set(as_uint("seed", seed, 64), True)


def draw_seed():
    """A fresh (seed, stream) pair from the default generator, as a tuple of
    two ints: the pair a dropout call with seed=None would have drawn.

    Give it to both the forward and the backward to regenerate the mask in
    the backward with nothing stored::

        seed, stream = dropnorm.draw_seed()
        y = dropnorm.dropout(x, 0.5, seed=seed, stream=stream)
        dx = dropnorm.dropout_backward(dy, 0.5, seed=seed, stream=stream)

    The pairs do not repeat within a process (short of 2**64 draws, or of
    ``manual_seed`` with the same seed again, which repeats them on purpose).
    """
    cdef uint64_t seed, stream
    _gen_draw(&seed, &stream)
    return (seed, stream)


def _draw_layer_seed():
    """A seed for a layer made without one: derived from the next draw k of
    the default generator (see the module docstring)."""
    cdef uint64_t seed, k
    cdef uint32_t c[4]
    cdef uint32_t key[2]
    cdef uint32_t o[4]
    _gen_draw(&seed, &k)
    c[0] = <uint32_t>k
    c[1] = <uint32_t>(k >> 32)
    c[2] = <uint32_t>0xFFFFFFFF
    c[3] = <uint32_t>0xFFFFFFFF
    key[0] = <uint32_t>seed
    key[1] = <uint32_t>(seed >> 32)
    dn_philox4x32_10(c, key, o)
    return (<uint64_t>o[1] << 32) | o[0]


cdef inline uint64_t _seed_or_zero(name, value) except? 0:
    """An explicit seed or stream (checked), or 0 for None."""
    return 0 if value is None else as_uint(name, value, 64)

# The arrays of each call as they go to spans_of, written ones first, and
# the exact in-place uses the C header allows (y == x; dx == dy).
_FORWARD_NAMES = ("out", "mask", "x")
_APPLY_NAMES = ("out", "x", "mask")
_BACKWARD_NAMES = ("out", "dy", "mask")
_OUT_IS_X = (("out", "x"),)
_OUT_IS_DY = (("out", "dy"),)

ctypedef fused floating:
    float
    double


cdef struct Geometry:
    int64_t n, c, s
    dn_layout layout
    bint channelwise


# The C calls, one per kernel: x's (dy's) pointer type (float or double)
# picks the C function; the other arrays are those of the Spans, in the
# order of the names above.

cdef dn_status _forward_c(const floating *x, const Spans *a, const Geometry *g, double p,
                          uint64_t seed, uint64_t stream, uint64_t offset, int mode,
                          bint training) noexcept nogil:
    return dn_dropout_forward_offset(g.n, g.c, g.s, g.layout, g.channelwise, x, p, seed,
                                     stream, offset, <dn_dropout_mode>mode, training,
                                     <floating *>a.data[0], <uint8_t *>a.data[1])


cdef dn_status _apply_mask_c(const floating *x, const Spans *a, const Geometry *g, double p,
                             int mode) noexcept nogil:
    return dn_dropout_apply_mask(g.n, g.c, g.s, g.layout, g.channelwise, x,
                                 <const uint8_t *>a.data[2], p, <dn_dropout_mode>mode,
                                 <floating *>a.data[0])


cdef dn_status _backward_c(const floating *dy, const Spans *a, const Geometry *g, double p,
                           uint64_t seed, uint64_t stream, uint64_t offset,
                           int mode) noexcept nogil:
    return dn_dropout_backward_offset(g.n, g.c, g.s, g.layout, g.channelwise, dy, p, seed,
                                      stream, offset, <dn_dropout_mode>mode,
                                      <const uint8_t *>a.data[2], <floating *>a.data[0])


cdef uint64_t _offset(value, int64_t bits) except? 0:
    """The checked offset of a call with `bits` decisions: an integer in
    [0, 2**64) whose decisions offset .. offset + bits - 1 all exist."""
    cdef uint64_t offset = as_uint("offset", value, 64)
    if bits > 0 and offset > <uint64_t>0xFFFFFFFFFFFFFFFF - <uint64_t>(bits - 1):
        raise ValueError(f"offset: decisions {offset} .. {offset} + {bits - 1} run past the "
                         f"last one, 2**64 - 1")
    return offset


# The half types (uint16_t storage): bf16 picks _bf16 or _f16.

cdef dn_status _forward_h(bint bf16, const Spans *a, const Geometry *g, double p,
                          uint64_t seed, uint64_t stream, uint64_t offset, int mode,
                          bint training) noexcept nogil:
    return dn_dropout_forward_offset_half(bf16, g.n, g.c, g.s, g.layout, g.channelwise,
                                          <const uint16_t *>a.data[2], p, seed, stream, offset,
                                          <dn_dropout_mode>mode, training,
                                          <uint16_t *>a.data[0], <uint8_t *>a.data[1])


cdef dn_status _apply_mask_h(bint bf16, const Spans *a, const Geometry *g, double p,
                             int mode) noexcept nogil:
    return dn_dropout_apply_mask_half(bf16, g.n, g.c, g.s, g.layout, g.channelwise,
                                      <const uint16_t *>a.data[1], <const uint8_t *>a.data[2], p,
                                      <dn_dropout_mode>mode, <uint16_t *>a.data[0])


cdef dn_status _backward_h(bint bf16, const Spans *a, const Geometry *g, double p,
                           uint64_t seed, uint64_t stream, uint64_t offset,
                           int mode) noexcept nogil:
    return dn_dropout_backward_offset_half(bf16, g.n, g.c, g.s, g.layout, g.channelwise,
                                           <const uint16_t *>a.data[1], p, seed, stream, offset,
                                           <dn_dropout_mode>mode, <const uint8_t *>a.data[2],
                                           <uint16_t *>a.data[0])


cdef inline bint _is_bf16(int typ) noexcept nogil:
    """For the type number of a checked array of a half type: bfloat16 (a
    type number NumPy gives ml_dtypes at run time), or float16."""
    return typ != cnp.NPY_FLOAT16


cdef int64_t _geometry(Geometry *g, name, x, bint channelwise, axis) except -1:
    """g: the geometry of a dropout call on the ndarray x; returns the number
    of decisions (x.size, or N*C with channelwise).

    axis must be an integer always; its value matters (and is checked
    against x) only when channelwise."""
    cdef bint channels_last = False
    g.channelwise = channelwise
    if not channelwise:
        as_int("axis", axis)
        g.n, g.c, g.s = cnp.PyArray_SIZE(<cnp.ndarray>x), 1, 1
    elif cnp.PyArray_NDIM(<cnp.ndarray>x) < 2:
        raise ValueError(f"{name}: channelwise dropout needs at least 2 dimensions "
                         f"(N, C, *spatial), got shape {x.shape}")
    else:
        g.n, g.c, g.s, channels_last = tensor_extents(x, axis)
    g.layout = DN_LAYOUT_NSC if channels_last else DN_LAYOUT_NCS
    return g.n * g.c if channelwise else g.n


def philox4x32_10(ctr, key):
    """The Philox4x32-10 block function (Salmon et al., SC'11; Random123).

    ctr: 4 integers in [0, 2**32); key: 2 integers in [0, 2**32).
    Returns the 4 output words as a tuple of ints. For example
    ``philox4x32_10((0, 0, 0, 0), (0, 0))`` is
    ``(0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)``.
    """
    cdef uint32_t c[4]
    cdef uint32_t k[2]
    cdef uint32_t o[4]
    cw = as_words("ctr", ctr, 4)
    kw = as_words("key", key, 2)
    for i in range(4):
        c[i] = cw[i]
    k[0] = kw[0]
    k[1] = kw[1]
    dn_philox4x32_10(c, k, o)
    return (o[0], o[1], o[2], o[3])


def dropout_mask(n, p, seed=None, stream=None, offset=0):
    """The packed keep mask of n dropout decisions for (p, seed, stream).

    Bit i (byte i//8, bit i%8, LSB first) is 1 if decision i is kept.
    Returns a uint8 array of (n + 7)//8 bytes; the unused high bits of the
    last byte are 0. It is the mask ``dropout(x, p, seed, stream,
    return_mask=True)`` returns for an x of n elements (or of n = N*C
    channels with channelwise=True).

    n: a count >= 0; p: drop probability in [0, 1]; seed, stream: integers
    in [0, 2**64). With seed=None and stream=None (the default) the call
    draws a fresh (seed, stream) from the default generator (see
    ``manual_seed``), so every call gives a new mask; with either one given,
    the other one is 0.

    offset: bit i is decision offset + i of the whole mask (an integer >= 0,
    any value), so a shard of a batch that starts at decision ``offset``
    gets exactly its slice of the whole batch's mask.
    """
    cdef uint64_t cseed, cstream, coffset
    n = as_count("n", n)
    p = as_probability("p", p)
    cseed = _seed_or_zero("seed", seed)
    cstream = _seed_or_zero("stream", stream)
    coffset = _offset(offset, n)
    if n and seed is None and stream is None:
        _gen_draw(&cseed, &cstream)
    mask = np.empty((n + 7) // 8, np.uint8)
    cdef uint8_t *m = <uint8_t *>cnp.PyArray_DATA(mask)
    cdef dn_status st
    cdef int64_t cn = n
    cdef double cp = p
    if n:
        with nogil:
            st = dn_dropout_mask_offset(cn, cp, cseed, cstream, coffset, m)
        if st != DN_OK:
            raise_status(st, "dropout_mask")
    return mask


cdef tuple _dropout_operands(name, x, p, seed, stream, mode, channelwise):
    """The checked arguments every dropout call with (seed, stream) takes:
    the array (named name), p, seed, stream (0 for None), the mode's C value
    and channelwise."""
    return (as_array(name, x, 1), as_probability("p", p), _seed_or_zero("seed", seed),
            _seed_or_zero("stream", stream), as_dropout_mode(mode),
            as_flag("channelwise", channelwise))


def dropout(x, p=0.5, seed=None, stream=None, mode="inverted", training=True,
            channelwise=False, axis=1, out=None, return_mask=False, offset=0):
    """Dropout forward (Hinton et al. 2012; Srivastava et al. 2014).

    x: float32 or float64 array, any shape with ndim >= 1, or a half type,
    float16 or bfloat16 (ml_dtypes.bfloat16), whose kept values are
    x*(1/(1-p)) computed in float32 and rounded once to x's dtype (the mask
    is the float32 one). Element i of the
    flat C order is dropped by decision i of (p, seed, stream) (see the
    module docstring), so a call is reproducible bit for bit, for any thread
    count.

    seed, stream: integers in [0, 2**64), or None.
      seed=None and stream=None (the default): a fresh mask on every call,
        as ``torch.nn.functional.dropout`` gives. A training call draws a new
        (seed, stream) from dropnorm's default generator (``manual_seed``
        makes the sequence repeatable; ``draw_seed`` draws a pair yourself);
        a call in inference, on an empty x, or that raises, draws nothing.
        For the backward keep the mask (``return_mask=True``, then
        ``dropout_backward(dy, p, mask=mask)``), or draw the pair with
        ``draw_seed()`` and pass it to both calls.
      Otherwise the mask is a pure function of (seed, stream), with 0 for
        the one not given: give successive calls with one seed successive
        streams, and the backward the same (seed, stream).

    p: drop probability in [0, 1]. p == 0 returns x unchanged (bitwise);
    p == 1 returns zeros (never inf or NaN).

    mode:
      "inverted" (default): training y = x*keep/(1-p), the scale 1/(1-p)
        rounded once to x's dtype; inference (training=False) y = x.
      "classic" (the 2012 paper): training y = x*keep; inference
        y = x*(1-p), (1-p) rounded to x's dtype (zeros for p == 1).
    Dropped places are exactly +0.0, also where x is NaN or inf.

    channelwise: channel ("spatial") dropout as in Dropout1d/2d/3d: one
      decision per (n, c), decision index n*C + c, applied to every value of
      that channel. x is (N, C, *spatial) with axis=1 or (N, *spatial, C)
      with axis=-1 and needs ndim >= 2. axis is used only when channelwise.

    out: an array like x to write y into; it may be x itself (in place),
    and must not share memory with anything else. Non-contiguous, misaligned
    or byte-swapped (e.g. ``>f4``) inputs are copied; out must be
    C-contiguous, aligned and of native byte order. An empty x gives an
    empty y (and an empty mask).

    training, channelwise and return_mask are flags: bool or numpy.bool_
    only (a string such as 'False' raises TypeError).

    return_mask: also return the packed keep mask (uint8, (bits + 7)//8
      bytes, bits = x.size, or N*C with channelwise); in inference it is all
      ones. It is what dropout_backward and dropout_apply_mask take.

    offset: x is a shard of a larger batch whose decisions start at this
      index (an integer >= 0; elements, or (n, c) pairs with channelwise):
      element i uses decision offset + i, so the shards of a batch, each
      given its offset, get exactly their slices of the whole batch's output
      and mask (data-parallel training). The mask returned is the shard's
      own. Any offset works, not only multiples of 4.

    Returns y, or (y, mask) with return_mask=True.
    """
    cdef Geometry g
    cdef int64_t bits
    cdef double p_c
    cdef uint64_t seed_c, stream_c, offset_c
    cdef int mode_c, typ
    cdef bint training_c
    cdef dn_status st
    cdef Spans a
    x, p_c, seed_c, stream_c, mode_c, channelwise = _dropout_operands(
        "x", x, p, seed, stream, mode, channelwise)
    training_c = as_flag("training", training)
    return_mask = as_flag("return_mask", return_mask)
    bits = _geometry(&g, "x", x, channelwise, axis)
    offset_c = _offset(offset, bits)
    y = output_like("out", out, x)
    mask = np.empty((bits + 7) // 8, np.uint8) if return_mask else None
    if cnp.PyArray_SIZE(<cnp.ndarray>x):
        spans_of(&a, (y, mask, x), 2, 0b101, _FORWARD_NAMES, _OUT_IS_X)
        if training_c and seed is None and stream is None:
            # after every check: a call that raises (or has no element) draws nothing
            _gen_draw(&seed_c, &stream_c)
        typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
        with nogil:
            if typ == cnp.NPY_DOUBLE:
                st = _forward_c(<const double *>a.data[2], &a, &g, p_c, seed_c,
                                stream_c, offset_c, mode_c, training_c)
            elif typ == cnp.NPY_FLOAT:
                st = _forward_c(<const float *>a.data[2], &a, &g, p_c, seed_c,
                                stream_c, offset_c, mode_c, training_c)
            else:
                st = _forward_h(_is_bf16(typ), &a, &g, p_c, seed_c, stream_c, offset_c,
                                mode_c, training_c)
        if st != DN_OK:
            raise_status(st, "dropout")
    return (y, mask) if return_mask else y


def dropout_apply_mask(x, mask, p, mode="inverted", channelwise=False, axis=1, out=None):
    """Training dropout forward with a given mask instead of (seed, stream).

    y = x*keep*scale with keep from the packed mask (uint8, (bits + 7)//8
    bytes, bits = x.size, or N*C with channelwise; unused high bits are
    ignored) and scale = 1/(1-p) rounded to x's dtype ("inverted") or 1
    ("classic"). p sets only the scale; p == 1 gives zeros whatever the mask.
    With the mask of ``dropout(..., return_mask=True)`` this reproduces that
    call's y exactly. mode, channelwise and axis as in dropout (give the
    forward's); out may be x itself but must not share memory with the mask.
    """
    cdef Geometry g
    cdef int64_t bits
    cdef double p_c
    cdef int mode_c, typ
    cdef dn_status st
    cdef Spans a
    x = as_array("x", x, 1)
    p_c = as_probability("p", p)
    mode_c = as_dropout_mode(mode)
    channelwise = as_flag("channelwise", channelwise)
    bits = _geometry(&g, "x", x, channelwise, axis)
    mask = as_mask("mask", mask, bits)
    y = output_like("out", out, x)
    if cnp.PyArray_SIZE(<cnp.ndarray>x):
        spans_of(&a, (y, x, mask), 1, 0b11, _APPLY_NAMES, _OUT_IS_X)
        typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
        with nogil:
            if typ == cnp.NPY_DOUBLE:
                st = _apply_mask_c(<const double *>a.data[1], &a, &g, p_c, mode_c)
            elif typ == cnp.NPY_FLOAT:
                st = _apply_mask_c(<const float *>a.data[1], &a, &g, p_c, mode_c)
            else:
                st = _apply_mask_h(_is_bf16(typ), &a, &g, p_c, mode_c)
        if st != DN_OK:
            raise_status(st, "dropout_apply_mask")
    return y


def dropout_backward(dy, p, seed=None, stream=None, mode="inverted", channelwise=False,
                     axis=1, mask=None, out=None, offset=0):
    """Gradient of the training dropout forward: dx = dy*keep*scale.

    scale = 1/(1-p) rounded to dy's dtype ("inverted") or 1 ("classic").
    The decisions come from mask (the forward's packed mask; seed and stream
    are then ignored) or, with mask=None, are regenerated from (seed, stream)
    with nothing stored: pass the forward's p, seed, stream, mode,
    channelwise and axis (a seed or stream not given is 0, as in dropout).
    With mask, seed and stream all None, ValueError: a forward without a
    seed drew a fresh pair, which only its mask (``return_mask=True``) or a
    pair drawn beforehand (``draw_seed()``) can reproduce. (Through
    inference the gradient is dy for "inverted" and dy*(1-p) for "classic".)

    dy: float32, float64, float16 or bfloat16, the shape of the forward's x.
    out: where dx goes; it may be dy itself but must not share memory with
    the mask. offset: the forward's (a shard's first decision in the whole
    batch); a stored mask is the shard's own.
    """
    cdef Geometry g
    cdef int64_t bits
    cdef double p_c
    cdef uint64_t seed_c, stream_c, offset_c
    cdef int mode_c, typ
    cdef dn_status st
    cdef Spans a
    dy, p_c, seed_c, stream_c, mode_c, channelwise = _dropout_operands(
        "dy", dy, p, seed, stream, mode, channelwise)
    bits = _geometry(&g, "dy", dy, channelwise, axis)
    offset_c = _offset(offset, bits)
    if mask is not None:
        mask = as_mask("mask", mask, bits)
    dx = output_like("out", out, dy)
    if mask is None and seed is None and stream is None:
        raise ValueError(
            "seed: dropout_backward needs the forward's mask (mask=) or its (seed, stream); a "
            "dropout without a seed draws a fresh pair, so keep its mask "
            "(dropout(..., return_mask=True)) or draw the pair first with dropnorm.draw_seed() "
            "and pass it to both calls")
    if cnp.PyArray_SIZE(<cnp.ndarray>dy):
        spans_of(&a, (dx, dy, mask), 1, 0b11, _BACKWARD_NAMES, _OUT_IS_DY)
        typ = cnp.PyArray_TYPE(<cnp.ndarray>dy)
        with nogil:
            if typ == cnp.NPY_DOUBLE:
                st = _backward_c(<const double *>a.data[1], &a, &g, p_c, seed_c,
                                 stream_c, offset_c, mode_c)
            elif typ == cnp.NPY_FLOAT:
                st = _backward_c(<const float *>a.data[1], &a, &g, p_c, seed_c,
                                 stream_c, offset_c, mode_c)
            else:
                st = _backward_h(_is_bf16(typ), &a, &g, p_c, seed_c, stream_c, offset_c,
                                 mode_c)
        if st != DN_OK:
            raise_status(st, "dropout_backward")
    return dx
