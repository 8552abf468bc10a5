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
"""

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

import numpy as np

from dropnorm._checks import as_count, as_words
from dropnorm._runtime import raise_status

cnp.import_array()

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
                          uint64_t seed, uint64_t stream, int mode,
                          bint training) noexcept nogil:
    return dn_dropout_forward(g.n, g.c, g.s, g.layout, g.channelwise, x, p, seed, stream,
                              <dn_dropout_mode>mode, training, <floating *>a.data[0],
                              <uint8_t *>a.data[1])


cdef dn_status _apply_mask_c(const floating *x, const Spans *a, const Geometry *g, double p,
                             int mode) noexcept nogil:
    return dn_dropout_apply_mask(g.n, g.c, g.s, g.layout, g.channelwise, x,
                                 <const uint8_t *>a.data[2], p, <dn_dropout_mode>mode,
                                 <floating *>a.data[0])


cdef dn_status _backward_c(const floating *dy, const Spans *a, const Geometry *g, double p,
                           uint64_t seed, uint64_t stream, int mode) noexcept nogil:
    return dn_dropout_backward(g.n, g.c, g.s, g.layout, g.channelwise, dy, p, seed, stream,
                               <dn_dropout_mode>mode, <const uint8_t *>a.data[2],
                               <floating *>a.data[0])


# The half types (uint16_t storage): bf16 picks _bf16 or _f16.

cdef dn_status _forward_h(bint bf16, const Spans *a, const Geometry *g, double p,
                          uint64_t seed, uint64_t stream, int mode,
                          bint training) noexcept nogil:
    return dn_dropout_forward_half(bf16, g.n, g.c, g.s, g.layout, g.channelwise,
                                   <const uint16_t *>a.data[2], p, seed, stream,
                                   <dn_dropout_mode>mode, training, <uint16_t *>a.data[0],
                                   <uint8_t *>a.data[1])


cdef dn_status _apply_mask_h(bint bf16, const Spans *a, const Geometry *g, double p,
                             int mode) noexcept nogil:
    return dn_dropout_apply_mask_half(bf16, g.n, g.c, g.s, g.layout, g.channelwise,
                                      <const uint16_t *>a.data[1], <const uint8_t *>a.data[2], p,
                                      <dn_dropout_mode>mode, <uint16_t *>a.data[0])


cdef dn_status _backward_h(bint bf16, const Spans *a, const Geometry *g, double p,
                           uint64_t seed, uint64_t stream, int mode) noexcept nogil:
    return dn_dropout_backward_half(bf16, g.n, g.c, g.s, g.layout, g.channelwise,
                                    <const uint16_t *>a.data[1], p, seed, stream,
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


def dropout_mask(n, p, seed=0, stream=0):
    """The packed keep mask of n dropout decisions for (p, seed, stream).

    Bit i (byte i//8, bit i%8, LSB first) is 1 if decision i is kept.
    Returns a uint8 array of (n + 7)//8 bytes; the unused high bits of the
    last byte are 0. It is the mask ``dropout(x, p, seed, stream,
    return_mask=True)`` returns for an x of n elements (or of n = N*C
    channels with channelwise=True).

    n: a count >= 0; p: drop probability in [0, 1]; seed, stream: integers
    in [0, 2**64).
    """
    n = as_count("n", n)
    p = as_probability("p", p)
    seed = as_uint("seed", seed, 64)
    stream = as_uint("stream", stream, 64)
    mask = np.empty((n + 7) // 8, np.uint8)
    cdef uint8_t *m = <uint8_t *>cnp.PyArray_DATA(mask)
    cdef dn_status st
    cdef int64_t cn = n
    cdef double cp = p
    cdef uint64_t cseed = seed, cstream = stream
    if n:
        with nogil:
            st = dn_dropout_mask(cn, cp, cseed, cstream, m)
        if st != DN_OK:
            raise_status(st, "dropout_mask")
    return mask


cdef tuple _dropout_operands(name, x, p, seed, stream, mode, channelwise):
    """The checked arguments every dropout call with (seed, stream) takes:
    the array (named name), p, seed, stream, the mode's C value and
    channelwise."""
    return (as_array(name, x, 1), as_probability("p", p), as_uint("seed", seed, 64),
            as_uint("stream", stream, 64), as_dropout_mode(mode),
            as_flag("channelwise", channelwise))


def dropout(x, p=0.5, seed=0, stream=0, mode="inverted", training=True,
            channelwise=False, axis=1, out=None, return_mask=False):
    """Dropout forward (Hinton et al. 2012; Srivastava et al. 2014).

    x: float32 or float64 array, any shape with ndim >= 1, or a half type,
    float16 or bfloat16 (ml_dtypes.bfloat16), whose kept values are
    x*(1/(1-p)) computed in float32 and rounded once to x's dtype (the mask
    is the float32 one). Element i of the
    flat C order is dropped by decision i of (p, seed, stream) (see the
    module docstring), so a call is reproducible bit for bit, for any thread
    count. Give successive calls with one seed successive streams.

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

    Returns y, or (y, mask) with return_mask=True.
    """
    cdef Geometry g
    cdef int64_t bits
    cdef double p_c
    cdef uint64_t seed_c, stream_c
    cdef int mode_c, typ
    cdef bint training_c
    cdef dn_status st
    cdef Spans a
    x, p_c, seed_c, stream_c, mode_c, channelwise = _dropout_operands(
        "x", x, p, seed, stream, mode, channelwise)
    training_c = as_flag("training", training)
    return_mask = as_flag("return_mask", return_mask)
    bits = _geometry(&g, "x", x, channelwise, axis)
    y = output_like("out", out, x)
    mask = np.empty((bits + 7) // 8, np.uint8) if return_mask else None
    if cnp.PyArray_SIZE(<cnp.ndarray>x):
        spans_of(&a, (y, mask, x), 2, 0b101, _FORWARD_NAMES, _OUT_IS_X)
        typ = cnp.PyArray_TYPE(<cnp.ndarray>x)
        with nogil:
            if typ == cnp.NPY_DOUBLE:
                st = _forward_c(<const double *>a.data[2], &a, &g, p_c, seed_c,
                                stream_c, mode_c, training_c)
            elif typ == cnp.NPY_FLOAT:
                st = _forward_c(<const float *>a.data[2], &a, &g, p_c, seed_c,
                                stream_c, mode_c, training_c)
            else:
                st = _forward_h(_is_bf16(typ), &a, &g, p_c, seed_c, stream_c, mode_c,
                                training_c)
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
    call's y exactly. Other arguments as in dropout; out may be x itself but
    must not share memory with the mask.
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


def dropout_backward(dy, p, seed=0, stream=0, mode="inverted", channelwise=False, axis=1,
                     mask=None, out=None):
    """Gradient of the training dropout forward: dx = dy*keep*scale.

    scale = 1/(1-p) rounded to dy's dtype ("inverted") or 1 ("classic").
    The decisions come from mask (the forward's packed mask; seed and stream
    are then ignored) or, with mask=None, are regenerated from (seed, stream)
    with nothing stored: pass the forward's p, seed, stream, mode,
    channelwise and axis. (Through inference the gradient is dy for
    "inverted" and dy*(1-p) for "classic".)

    dy: float32, float64, float16 or bfloat16, the shape of the forward's x.
    out: where dx goes; it may be dy itself but must not share memory with
    the mask.
    """
    cdef Geometry g
    cdef int64_t bits
    cdef double p_c
    cdef uint64_t seed_c, stream_c
    cdef int mode_c, typ
    cdef dn_status st
    cdef Spans a
    dy, p_c, seed_c, stream_c, mode_c, channelwise = _dropout_operands(
        "dy", dy, p, seed, stream, mode, channelwise)
    bits = _geometry(&g, "dy", dy, channelwise, axis)
    if mask is not None:
        mask = as_mask("mask", mask, bits)
    dx = output_like("out", out, dy)
    if cnp.PyArray_SIZE(<cnp.ndarray>dy):
        spans_of(&a, (dx, dy, mask), 1, 0b11, _BACKWARD_NAMES, _OUT_IS_DY)
        typ = cnp.PyArray_TYPE(<cnp.ndarray>dy)
        with nogil:
            if typ == cnp.NPY_DOUBLE:
                st = _backward_c(<const double *>a.data[1], &a, &g, p_c, seed_c,
                                 stream_c, mode_c)
            elif typ == cnp.NPY_FLOAT:
                st = _backward_c(<const float *>a.data[1], &a, &g, p_c, seed_c,
                                 stream_c, mode_c)
            else:
                st = _backward_h(_is_bf16(typ), &a, &g, p_c, seed_c, stream_c, mode_c)
        if st != DN_OK:
            raise_status(st, "dropout_backward")
    return dx
