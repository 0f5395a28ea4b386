#include "json.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <sstream>

namespace unmix {

class JsonParser {
public:
    JsonParser(const std::string& text, std::size_t max_depth) : text_(text), max_depth_(max_depth) {}

    Json document() {
        skip_space();
        Json value = parse_value(0);
        skip_space();
        if (pos_ != text_.size()) fail("unexpected characters after the JSON value");
        return value;
    }

private:
    const std::string& text_;
    std::size_t max_depth_;
    std::size_t pos_ = 0;

    [[noreturn]] void fail(const std::string& what) const {
        std::size_t line = 1, column = 1;
        for (std::size_t i = 0; i < pos_ && i < text_.size(); ++i) {
            if (text_[i] == '\n') {
                ++line;
                column = 1;
            } else {
                ++column;
            }
        }
        throw JsonError("invalid JSON at line " + std::to_string(line) + ", column " + std::to_string(column) +
                        ": " + what);
    }

    void skip_space() {
        while (pos_ < text_.size() &&
               (text_[pos_] == ' ' || text_[pos_] == '\t' || text_[pos_] == '\n' || text_[pos_] == '\r'))
            ++pos_;
    }

    bool literal(const char* word) {
        std::size_t n = 0;
        while (word[n]) ++n;
        if (text_.compare(pos_, n, word) == 0) {
            pos_ += n;
            return true;
        }
        return false;
    }

    Json parse_value(std::size_t depth) {
        if (depth > max_depth_) fail("nesting deeper than " + std::to_string(max_depth_) + " levels");
        if (pos_ >= text_.size()) fail("unexpected end of input, expected a value");
        Json value;
        char c = text_[pos_];
        if (c == '{') {
            value.type_ = Json::Type::Object;
            ++pos_;
            skip_space();
            if (pos_ < text_.size() && text_[pos_] == '}') {
                ++pos_;
                return value;
            }
            for (;;) {
                skip_space();
                if (pos_ >= text_.size() || text_[pos_] != '"') fail("expected a string key");
                std::string key = parse_string();
                for (const auto& member : value.object_)
                    if (member.first == key) fail("duplicate key '" + key + "'");
                skip_space();
                if (pos_ >= text_.size() || text_[pos_] != ':') fail("expected ':' after a key");
                ++pos_;
                skip_space();
                value.object_.emplace_back(std::move(key), parse_value(depth + 1));
                skip_space();
                if (pos_ < text_.size() && text_[pos_] == ',') {
                    ++pos_;
                    continue;
                }
                if (pos_ < text_.size() && text_[pos_] == '}') {
                    ++pos_;
                    return value;
                }
                fail("expected ',' or '}' in an object");
            }
        }
        if (c == '[') {
            value.type_ = Json::Type::Array;
            ++pos_;
            skip_space();
            if (pos_ < text_.size() && text_[pos_] == ']') {
                ++pos_;
                return value;
            }
            for (;;) {
                skip_space();
                value.array_.push_back(parse_value(depth + 1));
                skip_space();
                if (pos_ < text_.size() && text_[pos_] == ',') {
                    ++pos_;
                    continue;
                }
                if (pos_ < text_.size() && text_[pos_] == ']') {
                    ++pos_;
                    return value;
                }
                fail("expected ',' or ']' in an array");
            }
        }
        if (c == '"') {
            value.type_ = Json::Type::String;
            value.string_ = parse_string();
            return value;
        }
        if (literal("true")) {
            value.type_ = Json::Type::Bool;
            value.boolean_ = true;
            return value;
        }
        if (literal("false")) {
            value.type_ = Json::Type::Bool;
            return value;
        }
        if (literal("null")) return value;
        if (c == '-' || (c >= '0' && c <= '9')) return parse_number();
        fail(std::string("unexpected character '") + c + "'");
    }

    Json parse_number() {
        std::size_t start = pos_;
        bool integral = true;
        if (text_[pos_] == '-') ++pos_;
        if (pos_ >= text_.size() || !(text_[pos_] >= '0' && text_[pos_] <= '9')) fail("expected a digit");
        if (text_[pos_] == '0') {
            ++pos_;
        } else {
            while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
        }
        if (pos_ < text_.size() && text_[pos_] == '.') {
            integral = false;
            ++pos_;
            if (pos_ >= text_.size() || !(text_[pos_] >= '0' && text_[pos_] <= '9'))
                fail("expected a digit after '.'");
            while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
        }
        if (pos_ < text_.size() && (text_[pos_] == 'e' || text_[pos_] == 'E')) {
            integral = false;
            ++pos_;
            if (pos_ < text_.size() && (text_[pos_] == '+' || text_[pos_] == '-')) ++pos_;
            if (pos_ >= text_.size() || !(text_[pos_] >= '0' && text_[pos_] <= '9'))
                fail("expected a digit in the exponent");
            while (pos_ < text_.size() && text_[pos_] >= '0' && text_[pos_] <= '9') ++pos_;
        }
        std::string token = text_.substr(start, pos_ - start);
        Json value;
        value.type_ = Json::Type::Number;
        value.string_ = token;
        errno = 0;
        value.number_ = std::strtod(token.c_str(), nullptr);  // correctly rounded (glibc)
        if (!std::isfinite(value.number_)) fail("number out of range: " + token);
        if (integral) {
            errno = 0;
            long long integer = std::strtoll(token.c_str(), nullptr, 10);
            if (errno == 0) {
                value.integral_ = true;
                value.integer_ = integer;
            }
        }
        return value;
    }

    unsigned hex4() {
        if (pos_ + 4 > text_.size()) fail("truncated \\u escape");
        unsigned code = 0;
        for (int i = 0; i < 4; ++i) {
            char h = text_[pos_++];
            code <<= 4;
            if (h >= '0' && h <= '9') code |= unsigned(h - '0');
            else if (h >= 'a' && h <= 'f') code |= unsigned(h - 'a' + 10);
            else if (h >= 'A' && h <= 'F') code |= unsigned(h - 'A' + 10);
            else fail("bad hex digit in a \\u escape");
        }
        return code;
    }

    static void append_utf8(std::string& out, unsigned code) {
        if (code < 0x80) {
            out += char(code);
        } else if (code < 0x800) {
            out += char(0xC0 | (code >> 6));
            out += char(0x80 | (code & 0x3F));
        } else if (code < 0x10000) {
            out += char(0xE0 | (code >> 12));
            out += char(0x80 | ((code >> 6) & 0x3F));
            out += char(0x80 | (code & 0x3F));
        } else {
            out += char(0xF0 | (code >> 18));
            out += char(0x80 | ((code >> 12) & 0x3F));
            out += char(0x80 | ((code >> 6) & 0x3F));
            out += char(0x80 | (code & 0x3F));
        }
    }

    std::string parse_string() {
        ++pos_;  // opening quote
        std::string out;
        for (;;) {
            if (pos_ >= text_.size()) fail("unterminated string");
            unsigned char c = static_cast<unsigned char>(text_[pos_]);
            if (c == '"') {
                ++pos_;
                return out;
            }
            if (c < 0x20) fail("control character in a string");
            if (c != '\\') {
                out += char(c);
                ++pos_;
                continue;
            }
            ++pos_;
            if (pos_ >= text_.size()) fail("unterminated escape");
            char e = text_[pos_++];
            switch (e) {
                case '"': out += '"'; break;
                case '\\': out += '\\'; break;
                case '/': out += '/'; break;
                case 'b': out += '\b'; break;
                case 'f': out += '\f'; break;
                case 'n': out += '\n'; break;
                case 'r': out += '\r'; break;
                case 't': out += '\t'; break;
                case 'u': {
                    unsigned code = hex4();
                    if (code >= 0xD800 && code <= 0xDBFF) {
                        if (pos_ + 2 > text_.size() || text_[pos_] != '\\' || text_[pos_ + 1] != 'u')
                            fail("unpaired surrogate in a \\u escape");
                        pos_ += 2;
                        unsigned low = hex4();
                        if (low < 0xDC00 || low > 0xDFFF) fail("bad low surrogate in a \\u escape");
                        code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00);
                    } else if (code >= 0xDC00 && code <= 0xDFFF) {
                        fail("unpaired surrogate in a \\u escape");
                    }
                    append_utf8(out, code);
                    break;
                }
                default: fail(std::string("bad escape '\\") + e + "'");
            }
        }
    }
};

Json Json::parse(const std::string& text, std::size_t max_depth) { return JsonParser(text, max_depth).document(); }

Json Json::parse_file(const std::string& path, std::size_t max_depth) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw JsonError(path + ": cannot be read");
    std::ostringstream buffer;
    buffer << in.rdbuf();
    try {
        return parse(buffer.str(), max_depth);
    } catch (const JsonError& error) {
        throw JsonError(path + ": " + error.what());
    }
}

const char* Json::type_name(Type type) {
    switch (type) {
        case Type::Null: return "null";
        case Type::Bool: return "a boolean";
        case Type::Number: return "a number";
        case Type::String: return "a string";
        case Type::Array: return "a list";
        case Type::Object: return "a mapping";
    }
    return "?";
}

static JsonError wrong(const char* expected, Json::Type got) {
    return JsonError(std::string("expected ") + expected + ", got " + Json::type_name(got));
}

bool Json::is_integer() const { return type_ == Type::Number && integral_; }

bool Json::as_bool() const {
    if (type_ != Type::Bool) throw wrong("a boolean", type_);
    return boolean_;
}

double Json::as_number() const {
    if (type_ != Type::Number) throw wrong("a number", type_);
    return number_;
}

long long Json::as_integer() const {
    if (!is_integer()) throw wrong("an integer", type_);
    return integer_;
}

unsigned long long Json::as_uint64() const {
    if (type_ != Type::Number || string_.empty() || string_[0] == '-' ||
        string_.find_first_of(".eE") != std::string::npos)
        throw wrong("a non-negative integer", type_);
    errno = 0;
    unsigned long long value = std::strtoull(string_.c_str(), nullptr, 10);
    if (errno != 0) throw JsonError("integer out of range: " + string_);
    return value;
}

const std::string& Json::as_string() const {
    if (type_ != Type::String) throw wrong("a string", type_);
    return string_;
}

const std::vector<Json>& Json::as_array() const {
    if (type_ != Type::Array) throw wrong("a list", type_);
    return array_;
}

const std::vector<std::pair<std::string, Json>>& Json::as_object() const {
    if (type_ != Type::Object) throw wrong("a mapping", type_);
    return object_;
}

bool Json::has(const std::string& key) const {
    if (type_ != Type::Object) return false;
    for (const auto& member : object_)
        if (member.first == key) return true;
    return false;
}

const Json& Json::operator[](const std::string& key) const {
    for (const auto& member : as_object())
        if (member.first == key) return member.second;
    throw JsonError("missing key '" + key + "'");
}

const Json& Json::operator[](std::size_t index) const {
    const auto& items = as_array();
    if (index >= items.size()) throw JsonError("index " + std::to_string(index) + " out of range");
    return items[index];
}

std::size_t Json::size() const {
    if (type_ == Type::Array) return array_.size();
    if (type_ == Type::Object) return object_.size();
    throw wrong("a list or a mapping", type_);
}

}  // namespace unmix
