// Minimal JSON reader (RFC 8259 subset sufficient for manifest.json and the golden files).
// Bounded nesting depth, clear errors with line and column; no third-party dependency.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace unmix {

class JsonError : public std::runtime_error {
public:
    using std::runtime_error::runtime_error;
};

class Json {
public:
    enum class Type { Null, Bool, Number, String, Array, Object };

    Json() = default;
    static Json parse(const std::string& text, std::size_t max_depth = 64);
    static Json parse_file(const std::string& path, std::size_t max_depth = 64);

    Type type() const { return type_; }
    bool is_null() const { return type_ == Type::Null; }
    bool is_bool() const { return type_ == Type::Bool; }
    bool is_number() const { return type_ == Type::Number; }
    bool is_integer() const;  // a number written without fraction or exponent
    bool is_string() const { return type_ == Type::String; }
    bool is_array() const { return type_ == Type::Array; }
    bool is_object() const { return type_ == Type::Object; }

    bool as_bool() const;
    double as_number() const;
    long long as_integer() const;  // throws unless is_integer() and in range
    unsigned long long as_uint64() const;  // a non-negative integer up to 2^64 - 1
    const std::string& as_string() const;
    const std::vector<Json>& as_array() const;
    // Object members in document order (duplicate keys are refused at parse time).
    const std::vector<std::pair<std::string, Json>>& as_object() const;

    bool has(const std::string& key) const;
    const Json& operator[](const std::string& key) const;  // throws when missing
    const Json& operator[](std::size_t index) const;       // throws when out of range
    std::size_t size() const;

    static const char* type_name(Type type);

private:
    friend class JsonParser;
    Type type_ = Type::Null;
    bool boolean_ = false;
    bool integral_ = false;
    double number_ = 0.0;
    long long integer_ = 0;
    std::string string_;
    std::vector<Json> array_;
    std::vector<std::pair<std::string, Json>> object_;
};

}  // namespace unmix
