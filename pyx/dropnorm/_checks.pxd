# cython: language_level=3
# The checks of _checks.pyx that the wrappers (_batchnorm.pyx, _dropout.pyx,
# _spans.pxd) call as C functions: cimported, each is a direct C call, and
# its fast path (an exact, ready ndarray; an exact float, int or bool) costs
# nanoseconds. Python code imports the same functions.

cpdef as_tensor(name, value)
cpdef param_dtype(x)
cpdef tensor_extents(x, axis)
cpdef as_vector(name, value, c, dtype, optional=*)
cpdef writable_vector(name, value, c, dtype)
cpdef same_tensor(name, value, x)
cpdef output_like(name, out, x)
cpdef as_real(name, value, what=*)
cpdef as_int(name, value)
cpdef as_flag(name, value)
cpdef as_eps(eps)
cpdef as_momentum(momentum, allow_none=*)
cpdef as_array(name, value, min_ndim=*)
cpdef as_inplace_array(name, value)
cpdef as_probability(name, p)
cpdef as_uint(name, value, bits)
cpdef as_dropout_mode(mode)
cpdef as_activation(activation)
cpdef as_mask(name, mask, nbits)
cpdef raise_overlap(names, written, in_place, arrays)
