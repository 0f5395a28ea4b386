// A backend whose three "networks" are closed-form and pixelwise, for testing the loop's own logic:
//   hybridstu:      least-squares abundances of each pixel against fixed spectra, projected on the simplex;
//   abundance_step: an oracle DDIM step: x0_hat = 2 a - 1 with a the projected least-squares abundances of
//                   the pixel's cube against the given endmembers, eps_hat = (x_t - sqrt(a_t) x0_hat) /
//                   sqrt(1 - a_t), x_prev = sqrt(a_prev) x0_hat + dir_coef eps_hat + sigma noise;
//   spectra_step:   the same step with x0_hat = 2 E_hat / scale - 1, E_hat = AtA^-1 AtY.
// With eta = 0 the last step returns x0_hat, so exact mixtures are recovered.
#pragma once

#include <vector>

#include "pipeline.hpp"

namespace unmix {

class AnalyticBackend : public Backend {
public:
    // spectra: (p, B) row-major, the endmembers hybridstu unmixes against.
    // leak > 0 makes the step networks imperfect (x0_hat += leak * x_t), so the result depends on the noise.
    AnalyticBackend(std::vector<float> spectra, int endmembers, int bands, float leak = 0.0f);
    void run(const std::string& network, const std::vector<TensorView>& in, std::vector<TensorView>& out) override;
    long calls() const { return calls_; }

private:
    void least_squares(const float* spectra_pb, const float* cube, size_t plane, int px);
    std::vector<float> spectra_;
    int p_, B_;
    float leak_;
    long calls_ = 0;
    std::vector<double> inverse_, gauss_, rhs_, a_;  // preallocated: run() does not allocate
};

}  // namespace unmix
