// A minimal test harness: CHECK records failures and the test returns non-zero at the end.
#pragma once

#include <cmath>
#include <cstdio>
#include <string>

namespace check {
inline int& failures() {
    static int count = 0;
    return count;
}
inline void fail(const char* file, int line, const std::string& what) {
    ++failures();
    std::fprintf(stderr, "%s:%d: FAILED: %s\n", file, line, what.c_str());
}
inline int finish(const char* name) {
    if (failures()) {
        std::fprintf(stderr, "%s: %d check(s) failed\n", name, failures());
        return 1;
    }
    std::printf("%s: all checks passed\n", name);
    return 0;
}
}  // namespace check

#define CHECK(cond)                                                   \
    do {                                                              \
        if (!(cond)) check::fail(__FILE__, __LINE__, #cond);          \
    } while (0)
#define CHECK_MSG(cond, msg)                                          \
    do {                                                              \
        if (!(cond)) check::fail(__FILE__, __LINE__, std::string(#cond) + " -- " + (msg)); \
    } while (0)
#define CHECK_THROWS(expr, type, fragment)                                                        \
    do {                                                                                          \
        bool thrown_ = false;                                                                     \
        try {                                                                                     \
            (void)(expr);                                                                         \
        } catch (const type& e_) {                                                                \
            thrown_ = true;                                                                       \
            if (std::string(e_.what()).find(fragment) == std::string::npos)                       \
                check::fail(__FILE__, __LINE__, std::string("message lacks '") + (fragment) + "': " + e_.what()); \
        }                                                                                         \
        if (!thrown_) check::fail(__FILE__, __LINE__, std::string(#expr) + " did not throw " #type); \
    } while (0)
