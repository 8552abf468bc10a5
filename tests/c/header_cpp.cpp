// The public header from C++11 (ctest header_cxx): extern "C" linkage,
// DN_RESTRICT and the enums, linked against the shared library.
#include <dropnorm/dropnorm.h>

#include <cstdio>
#include <cstring>
#include <vector>

static_assert(DN_OK == 0, "DN_OK is 0");
static_assert(DN_LAYOUT_NSC == 1 && DN_DROPOUT_CLASSIC == 1, "pinned enum values");

int main()
{
    std::vector<double> x = {1.0, 2.0, 3.0, 6.0}, y(4);
    double mean = 0.0, invstd = 0.0;
    dn_status st = dn_batchnorm_forward_train_f64(1, 1, 4, DN_LAYOUT_NCS, x.data(), nullptr,
                                                  nullptr, 0.0, 0.1, nullptr, nullptr, y.data(),
                                                  &mean, &invstd);
    if (st != DN_OK || mean != 3.0) {
        std::fprintf(stderr, "batch norm: %s\n", dn_status_str(st));
        return 1;
    }
    if (std::strcmp(dn_version(), DN_VERSION_STRING) != 0) return 1;
    std::printf("header C++: dropnorm %s, OK\n", dn_version());
    return 0;
}
