/* dropnorm version: the single source of the version number.
 * CMake and the Python package metadata both read DN_VERSION_STRING from here. */
#ifndef DROPNORM_VERSION_H
#define DROPNORM_VERSION_H

#define DN_VERSION_MAJOR 0
#define DN_VERSION_MINOR 1
#define DN_VERSION_PATCH 0
#define DN_VERSION_STRING "0.1.0"

/* One number that compares in order: 10000*major + 100*minor + patch. */
#define DN_VERSION_NUMBER \
    (DN_VERSION_MAJOR * 10000 + DN_VERSION_MINOR * 100 + DN_VERSION_PATCH)

#endif
