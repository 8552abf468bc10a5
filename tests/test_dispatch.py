"""The instruction-set variant is chosen once per process (dispatch.c), from
the CPU and DROPNORM_SIMD, and build_info() names the build each kernel
family runs."""

import json
import os
import subprocess
import sys

import dropnorm

_SCRIPT = r"""
import json, os
import numpy as np
import dropnorm
x = np.ones((4, 3, 8), np.float32)
first = dropnorm.build_info()
dropnorm.dropout(x, 0.5); dropnorm.batch_norm_train(x)
# the choice is not revisited when the environment changes afterwards
os.environ["DROPNORM_SIMD"] = "portable" if first["kernel_variant"] != "portable" else "avx2"
dropnorm.dropout(x, 0.5); dropnorm.batch_norm_train(x)
print(json.dumps([first, dropnorm.build_info()]))
"""


def _run(cap):
    env = dict(os.environ)
    env.pop("DROPNORM_SIMD", None)
    if cap is not None:
        env["DROPNORM_SIMD"] = cap
    out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                         text=True, check=True)
    return json.loads(out.stdout)


def test_variant_names_per_family_and_chosen_once():
    best = _run(None)[0]["kernel_variant"]
    assert best in ("portable", "avx2", "avx512")
    for cap in ("portable", "avx2", "avx512", None):
        first, later = _run(cap)
        assert first == later, (cap, first, later)
        level = first["kernel_variant"]
        families = first["kernel_variants"]
        if cap == "portable":
            assert level == "portable"
        if cap == "avx2":
            assert level in ("portable", "avx2")
        if level == "portable":
            assert families == {"batchnorm": "portable", "dropout": "portable",
                                "half": "portable"}
        elif level == "avx2":
            assert families == {"batchnorm": "avx2", "dropout": "avx2", "half": "avx2"}
        else:  # float and double batch norm run their AVX-512 variant (the AVX2
            # loops with a 64-byte inference pass); the half types' conversions are
            # AVX2's (F16C) unless AVX512-BF16 rounds bfloat16
            assert families in ({"batchnorm": "avx512", "dropout": "avx512", "half": "avx2"},
                                {"batchnorm": "avx512", "dropout": "avx512",
                                 "half": "avx512bf16"})
            if cap == "avx512":  # the cap keeps AVX512-BF16 out
                assert families["half"] == "avx2"


def test_build_info_in_this_process():
    info = dropnorm.build_info()
    assert set(info["kernel_variants"]) == {"batchnorm", "dropout", "half"}
    assert info["kernel_variants"]["dropout"] == info["kernel_variant"]
