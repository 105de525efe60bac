#pragma once
// SHA-256 through OpenSSL's EVP interface.

#include <array>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

namespace flowreg::detail {

// Lowercase hex digest of `data`.
std::string sha256_hex(std::string_view data);
// Lowercase hex digest of a file's content; nullopt when it cannot be read.
std::optional<std::string> sha256_file_hex(const std::filesystem::path& path);

}  // namespace flowreg::detail
