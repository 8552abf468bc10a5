# cython: language_level=3, boundscheck=False, wraparound=False, initializedcheck=False
"""Dropout: Philox4x32-10 keep masks and typed-memoryview wrappers over the C kernels.

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

from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

from dropnorm.libdropnorm cimport *
from dropnorm._spans cimport Spans, span, spans_overlap, spans_start

import numpy as np

from dropnorm._checks import (
    as_array,
    as_count,
    as_dropout_mode,
    as_flag,
    as_int,
    as_mask,
    as_probability,
    as_uint,
    as_words,
    output_like,
    raise_overlap,
    tensor_extents,
)
from dropnorm._runtime import raise_status

# the exact in-place uses the C header allows (y == x; dx == dy)
_OUT_IS_X = (("out", "x"),)
_OUT_IS_DY = (("out", "dy"),)

ctypedef fused floating:
    float
    double


cdef inline uint8_t *_mask_out(uint8_t[::1] m) noexcept nogil:
    return NULL if m is None else &m[0]


cdef inline const uint8_t *_mask_in(const uint8_t[::1] m) noexcept nogil:
    return NULL if m is None else &m[0]


cdef _check_mask_overlap(floating[::1] out, const floating[::1] x, const uint8_t[::1] mask,
                         size_t nbytes, names, in_place):
    """ValueError unless out is apart from the mask and from x (or exactly x)."""
    cdef Spans sp
    spans_start(&sp, 1)
    span(&sp, &out[0], nbytes, True)
    span(&sp, &x[0], nbytes, True)
    span(&sp, _mask_in(mask), 0 if mask is None else <size_t>mask.shape[0], False)
    if spans_overlap(&sp):
        raise_overlap(names, 1, in_place, out, x, mask)


def _forward(const floating[::1] x, floating[::1] y, uint8_t[::1] mask,
             int64_t n, int64_t c, int64_t s, bint channels_last, bint channelwise,
             double p, uint64_t seed, uint64_t stream, int mode, bint training):
    cdef dn_status st
    cdef dn_layout layout = DN_LAYOUT_NSC if channels_last else DN_LAYOUT_NCS
    cdef size_t t = <size_t>x.shape[0] * sizeof(floating)
    _check_mask_overlap(y, x, mask, t, ("out", "x", "mask"), _OUT_IS_X)  # mask: a new array
    with nogil:
        st = dn_dropout_forward(n, c, s, layout, channelwise, &x[0], p, seed, stream,
                                <dn_dropout_mode>mode, training, &y[0], _mask_out(mask))
    if st != DN_OK:
        raise_status(st, "dropout")


def _apply_mask(const floating[::1] x, const uint8_t[::1] mask, floating[::1] y,
                int64_t n, int64_t c, int64_t s, bint channels_last, bint channelwise,
                double p, int mode):
    cdef dn_status st
    cdef dn_layout layout = DN_LAYOUT_NSC if channels_last else DN_LAYOUT_NCS
    cdef size_t t = <size_t>x.shape[0] * sizeof(floating)
    _check_mask_overlap(y, x, mask, t, ("out", "x", "mask"), _OUT_IS_X)
    with nogil:
        st = dn_dropout_apply_mask(n, c, s, layout, channelwise, &x[0], &mask[0], p,
                                   <dn_dropout_mode>mode, &y[0])
    if st != DN_OK:
        raise_status(st, "dropout_apply_mask")


def _backward(const floating[::1] dy, const uint8_t[::1] mask, floating[::1] dx,
              int64_t n, int64_t c, int64_t s, bint channels_last, bint channelwise,
              double p, uint64_t seed, uint64_t stream, int mode):
    cdef dn_status st
    cdef dn_layout layout = DN_LAYOUT_NSC if channels_last else DN_LAYOUT_NCS
    cdef size_t t = <size_t>dy.shape[0] * sizeof(floating)
    _check_mask_overlap(dx, dy, mask, t, ("out", "dy", "mask"), _OUT_IS_DY)
    with nogil:
        st = dn_dropout_backward(n, c, s, layout, channelwise, &dy[0], p, seed, stream,
                                 <dn_dropout_mode>mode, _mask_in(mask), &dx[0])
    if st != DN_OK:
        raise_status(st, "dropout_backward")


def _geometry(name, x, channelwise, axis):
    """(n, c, s, channels_last, bits) of a dropout call on x.

    channelwise must already be a checked bool. axis must be an integer
    always; its value matters (and is checked against x) only when
    channelwise."""
    if not channelwise:
        as_int("axis", axis)
        return x.size, 1, 1, False, x.size
    if x.ndim < 2:
        raise ValueError(f"{name}: channelwise dropout needs at least 2 dimensions "
                         f"(N, C, *spatial), got shape {x.shape}")
    n, c, s, channels_last = tensor_extents(x, axis)
    return n, c, s, channels_last, n * c


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
    cdef uint8_t[::1] m = mask
    cdef dn_status st
    cdef int64_t cn = n
    cdef double cp = p
    cdef uint64_t cseed = seed, cstream = stream
    if n:
        with nogil:
            st = dn_dropout_mask(cn, cp, cseed, cstream, &m[0])
        if st != DN_OK:
            raise_status(st, "dropout_mask")
    return mask


def _dropout_operands(name, x, p, seed, stream, mode, channelwise):
    """The checked arguments every dropout call with (seed, stream) takes:
    the array (named name), p, seed, stream, the mode's C value and
    channelwise."""
    return (as_array(name, x, 1), as_probability("p", p), as_uint("seed", seed, 64),
            as_uint("stream", stream, 64), as_dropout_mode(mode),
            as_flag("channelwise", channelwise))


def dropout(x, p=0.5, seed=0, stream=0, mode="inverted", training=True,
            channelwise=False, axis=1, out=None, return_mask=False):
    """Dropout forward (Hinton et al. 2012; Srivastava et al. 2014).

    x: float32 or float64 array, any shape with ndim >= 1. Element i of the
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
    x, p, seed, stream, mode_c, channelwise = _dropout_operands(
        "x", x, p, seed, stream, mode, channelwise)
    training = as_flag("training", training)
    return_mask = as_flag("return_mask", return_mask)
    n, c, s, channels_last, bits = _geometry("x", x, channelwise, axis)
    y = output_like("out", out, x)
    mask = np.empty((bits + 7) // 8, np.uint8) if return_mask else None
    if x.size:
        _forward(x.reshape(-1), y.reshape(-1), mask, n, c, s, channels_last,
                 channelwise, p, seed, stream, mode_c, training)
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
    x = as_array("x", x, 1)
    p = as_probability("p", p)
    mode_c = as_dropout_mode(mode)
    channelwise = as_flag("channelwise", channelwise)
    n, c, s, channels_last, bits = _geometry("x", x, channelwise, axis)
    mask = as_mask("mask", mask, bits)
    y = output_like("out", out, x)
    if x.size:
        _apply_mask(x.reshape(-1), mask, y.reshape(-1), n, c, s, channels_last,
                    channelwise, p, mode_c)
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

    dy: float32 or float64, the shape of the forward's x. out: where dx
    goes; it may be dy itself but must not share memory with the mask.
    """
    dy, p, seed, stream, mode_c, channelwise = _dropout_operands(
        "dy", dy, p, seed, stream, mode, channelwise)
    n, c, s, channels_last, bits = _geometry("dy", dy, channelwise, axis)
    if mask is not None:
        mask = as_mask("mask", mask, bits)
    dx = output_like("out", out, dy)
    if dy.size:
        _backward(dy.reshape(-1), mask, dx.reshape(-1), n, c, s, channels_last,
                  channelwise, p, seed, stream, mode_c)
    return dx
