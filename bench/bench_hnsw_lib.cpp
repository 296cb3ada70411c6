// bench_hnsw_lib.cpp - a thin C wrapper around hnswlib (Debian's libhnswlib-dev), used only
// by bench/bench_hnsw.c to compare our HNSW with the reference implementation. Never part of
// libmcai. Exceptions are caught here and turned into a NULL or -1 return.
#include <hnswlib/hnswlib.h>

#include <cstdint>
#include <cstdio>

struct hnswlib_index {
    hnswlib::L2Space space;
    hnswlib::HierarchicalNSW<float> alg;
    hnswlib_index(int dim, size_t max_elements, int m, int ef_construction, uint64_t seed)
        : space(dim), alg(&space, max_elements, m, ef_construction, seed) {}
};

extern "C" {

void *bench_hnswlib_create(int dim, size_t max_elements, int m, int ef_construction,
                           uint64_t seed) {
    try {
        return new hnswlib_index(dim, max_elements, m, ef_construction, seed);
    } catch (const std::exception &e) {
        fprintf(stderr, "hnswlib: %s\n", e.what());
        return nullptr;
    }
}

int bench_hnswlib_add(void *p, const float *v, uint64_t label) {
    try {
        static_cast<hnswlib_index *>(p)->alg.addPoint(v, (hnswlib::labeltype)label);
        return 0;
    } catch (const std::exception &e) {
        fprintf(stderr, "hnswlib: %s\n", e.what());
        return -1;
    }
}

void bench_hnswlib_set_ef(void *p, int ef) {
    static_cast<hnswlib_index *>(p)->alg.setEf((size_t)ef);
}

// Writes up to k labels, closest first; returns how many, or -1 on an exception.
long bench_hnswlib_search(void *p, const float *q, size_t k, uint64_t *labels) {
    try {
        auto res = static_cast<hnswlib_index *>(p)->alg.searchKnn(q, k);
        long n = (long)res.size();
        for (long i = n - 1; i >= 0; i--) {
            labels[i] = res.top().second;
            res.pop();
        }
        return n;
    } catch (const std::exception &e) {
        fprintf(stderr, "hnswlib: %s\n", e.what());
        return -1;
    }
}

void bench_hnswlib_free(void *p) {
    delete static_cast<hnswlib_index *>(p);
}
}
