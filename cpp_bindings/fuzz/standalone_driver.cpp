// A libFuzzer-compatible driver for compilers without -fsanitize=fuzzer (gcc): runs LLVMFuzzerTestOneInput
// on every corpus file, then on deterministic random mutations of them (byte flips, inserts, deletes,
// splices, truncations; fixed seed) until the time budget ends. Build it under ASan/UBSan.
//   driver SECONDS CORPUS_DIR [SEED]
#include <dirent.h>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);
extern "C" __attribute__((weak)) int LLVMFuzzerInitialize(int*, char***);

int main(int argc, char** argv) {
    if (argc < 3) {
        std::fprintf(stderr, "usage: %s SECONDS CORPUS_DIR [SEED]\n", argv[0]);
        return 2;
    }
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    const double seconds = std::atof(argv[1]);
    std::vector<std::string> corpus;
    if (DIR* dir = ::opendir(argv[2])) {
        while (dirent* entry = ::readdir(dir)) {
            if (entry->d_name[0] == '.') continue;
            std::ifstream in(std::string(argv[2]) + "/" + entry->d_name, std::ios::binary);
            std::stringstream text;
            text << in.rdbuf();
            corpus.push_back(text.str());
        }
        ::closedir(dir);
    }
    if (corpus.empty()) corpus.push_back("");
    std::mt19937_64 rng(argc > 3 ? std::strtoull(argv[3], nullptr, 10) : 1);
    const char tokens[] = "{}[]\",:=;\n\r\t 0123456789.-+eE\\ulnatrfs{}";
    long runs = 0;
    for (const std::string& input : corpus) {
        LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
        ++runs;
    }
    const auto start = std::chrono::steady_clock::now();
    while (std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < seconds) {
        std::string input = corpus[rng() % corpus.size()];
        const int edits = 1 + static_cast<int>(rng() % 8);
        for (int e = 0; e < edits; ++e) {
            const size_t at = input.empty() ? 0 : rng() % (input.size() + 1);
            switch (rng() % 6) {
                case 0: if (!input.empty() && at < input.size()) input[at] = static_cast<char>(rng()); break;
                case 1: input.insert(at, 1, tokens[rng() % (sizeof tokens - 1)]); break;
                case 2: if (at < input.size()) input.erase(at, 1 + rng() % 16); break;
                case 3: {  // splice a piece of another corpus entry
                    const std::string& other = corpus[rng() % corpus.size()];
                    if (!other.empty()) {
                        const size_t from = rng() % other.size();
                        input.insert(at, other.substr(from, 1 + rng() % 64));
                    }
                    break;
                }
                case 4: input.resize(at); break;
                default: if (at < input.size()) input[at] = tokens[rng() % (sizeof tokens - 1)]; break;
            }
        }
        LLVMFuzzerTestOneInput(reinterpret_cast<const uint8_t*>(input.data()), input.size());
        ++runs;
    }
    std::printf("standalone fuzz driver: %ld runs in %.0f s, no finding\n", runs, seconds);
    return 0;
}
