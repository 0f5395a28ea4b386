// SHA-256 (FIPS 180-4) of a file, for the manifest's sha256 check of each network file.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace unmix {

std::string sha256_hex(const void* data, size_t size);
std::string file_sha256(const std::string& path);  // throws InputError when unreadable

}  // namespace unmix
