using EraserWorker.Core.Compute;
using EraserWorker.Models.Tests.TestSupport;
using TorchSharp;

namespace EraserWorker.Models.Tests;

/// <summary>Per-sample gradients, curvature rows and exact Hessian-vector products against finite differences and
/// against each other (float64 compute).</summary>
public sealed class GradientTests : IDisposable
{
    private readonly TinyWorld _world = new(samples: 6);
    private readonly LlamaModel _model;
    private readonly LoraRuntime _runtime;

    public GradientTests()
    {
        _model = _world.LoadModel(ComputePrecision.Float64);
        _runtime = _world.Runtime(_model);
    }

    public void Dispose()
    {
        _model.Dispose();
        _world.Dispose();
    }

    private double Loss(IReadOnlyList<TokenizedSample> samples, double[] theta) => _runtime.Losses(samples, theta).Sum();

    [Fact]
    public void Gradients_match_central_finite_differences()
    {
        var samples = _world.Samples.Take(3).ToList();
        var (loss, gradient) = _runtime.Gradient(samples, _world.Theta);
        Assert.Equal(Loss(samples, _world.Theta), loss, 1e-12);
        const double h = 1e-5;
        for (int k = 0; k < 3; k++)
        {
            var d = Vectors.Random(gradient.Length, 100 + k);
            double fd = (Loss(samples, Vectors.Axpy(h, d, _world.Theta)) - Loss(samples, Vectors.Axpy(-h, d, _world.Theta))) / (2 * h);
            double exact = Vectors.Dot(gradient, d);
            Assert.True(Math.Abs(fd - exact) <= 1e-6 * Math.Max(1, Math.Abs(exact)), $"direction {k}: fd {fd} vs {exact}");
        }
        // and single coordinates of an A and a B matrix
        foreach (var m in new[] { _world.Layout.Modules[0], _world.Layout.Modules[^1] })
            foreach (long i in new[] { m.OffsetA + 1, m.OffsetB + 2 })
            {
                var plus = (double[])_world.Theta.Clone();
                var minus = (double[])_world.Theta.Clone();
                plus[i] += h;
                minus[i] -= h;
                double fd = (Loss(samples, plus) - Loss(samples, minus)) / (2 * h);
                Assert.True(Math.Abs(fd - gradient[i]) <= 1e-6 * Math.Max(1, Math.Abs(gradient[i])), $"θ[{i}]: fd {fd} vs {gradient[i]}");
            }
    }

    [Fact]
    public void Per_sample_rows_sum_to_the_batch_gradient_and_do_not_depend_on_batching()
    {
        var samples = _world.Samples;
        var rows = _runtime.PerSample(samples, _world.Theta, curvature: true, seed: 3);
        var (_, gradient) = _runtime.Gradient(samples, _world.Theta);
        var sum = new double[gradient.Length];
        for (int i = 0; i < samples.Count; i++)
        {
            var row = rows.Gradient(i);
            for (int j = 0; j < sum.Length; j++)
                sum[j] += row[j];
        }
        Assert.True(Vectors.RelativeError(sum, gradient) < 1e-6, $"{Vectors.RelativeError(sum, gradient)}");
        // Each row equals the sample's own gradient computed alone (padding and batch-mates change nothing),
        // and its curvature row is the same whatever the batch (labels are drawn per sample id).
        foreach (int i in new[] { 0, 3, 5 })
        {
            var alone = _runtime.PerSample([samples[i]], _world.Theta, curvature: true, seed: 3);
            var (_, single) = _runtime.Gradient([samples[i]], _world.Theta);
            var row = rows.Gradient(i).ToArray().Select(x => (double)x).ToArray();
            Assert.True(Vectors.RelativeError(row, single) < 1e-6);
            Assert.Equal(rows.CurvatureRow(i).ToArray(), alone.CurvatureRow(0).ToArray(), (a, b) => Math.Abs(a - b) <= 1e-6f * Math.Max(1, Math.Abs(b)));
            Assert.Equal(rows.Losses[i], alone.Losses[0], 1e-12);
        }
        // another seed draws other labels
        var other = _runtime.PerSample(samples.Take(2).ToList(), _world.Theta, curvature: true, seed: 4);
        Assert.NotEqual(rows.CurvatureRow(0).ToArray(), other.CurvatureRow(0).ToArray());
    }

    [Fact]
    public void Sampled_curvature_rows_are_zero_mean_fisher_draws()
    {
        // E[c cᵀ] = G (the Gauss–Newton matrix of ℓ). Check vᵀ E[ccᵀ] v against vᵀ G v from exact products:
        // G v = H v − Σₜ (∂ℓ/∂zₜ)·∇²zₜ v; for a sample at a point where the output residual term is small the two agree
        // only approximately, so compare with the Fisher identity instead: E[c] = 0 and E[(cᵀv)²] > 0 with the right scale
        // (1/R Σₜ vᵀJₜᵀ(diag p − ppᵀ)Jₜv ≤ ‖Jv‖²).
        var sample = _world.Samples[1];
        int draws = 400;
        var batch = Enumerable.Range(0, draws).Select(k => sample with { Id = $"{sample.Id}#{k}" }).ToList();
        var rows = _runtime.PerSample(batch, _world.Theta, curvature: true, seed: 11);
        long p = _runtime.ParameterCount;
        var mean = new double[p];
        double meanNorm = 0;
        for (int k = 0; k < draws; k++)
        {
            var c = rows.CurvatureRow(k);
            double n2 = 0;
            for (int j = 0; j < p; j++)
            {
                mean[j] += c[j] / draws;
                n2 += (double)c[j] * c[j];
            }
            meanNorm += n2 / draws;
        }
        // ‖mean‖² ≈ E‖c‖²/draws for zero-mean draws (it would be ≈ E‖c‖² if biased)
        double ratio = Vectors.Dot(mean, mean) / meanNorm;
        Assert.InRange(ratio, 0.25 / draws, 4.0 / draws);
    }

    [Fact]
    public void Exact_hessian_vector_products_match_finite_differences_of_gradients_and_are_symmetric()
    {
        var samples = _world.Samples.Take(4).ToList();
        var theta = _world.Theta;
        var v = Vectors.Random(theta.Length, 21);
        var u = Vectors.Random(theta.Length, 22);
        var hv = _runtime.HessianVectorProduct(samples, theta, v, batchSize: 3);
        const double h = 1e-5;
        var (_, gp) = _runtime.Gradient(samples, Vectors.Axpy(h, v, theta));
        var (_, gm) = _runtime.Gradient(samples, Vectors.Axpy(-h, v, theta));
        var fd = gp.Zip(gm, (a, b) => (a - b) / (2 * h)).ToArray();
        Assert.True(Vectors.RelativeError(hv, fd) < 1e-6, $"{Vectors.RelativeError(hv, fd)}");
        var hu = _runtime.HessianVectorProduct(samples, theta, u, batchSize: 4);
        Assert.Equal(Vectors.Dot(u, hv), Vectors.Dot(v, hu), 1e-9 * Math.Abs(Vectors.Dot(u, hv)));
    }

    [Fact]
    public void Exact_cg_solves_the_damped_hessian_system()
    {
        var samples = _world.Samples;
        double lambda = 200; // random weights: the exact Hessian is indefinite; damp it positive definite
        var result = ExactInfluence.Solve(_runtime, _world.Theta, samples, [samples[0].Id], [], lambda, tolerance: 1e-8, maxIterations: 200);
        Assert.False(result.NegativeCurvature);
        Assert.True(result.RelativeResidual < 1e-7, $"{result.RelativeResidual}");
        // H' Δ = b  with b = g₀
        var (_, b) = _runtime.Gradient([samples[0]], _world.Theta);
        var hd = _runtime.HessianVectorProduct(samples.Skip(1).ToList(), _world.Theta, result.Delta);
        var lhs = hd.Zip(result.Delta, (a, d) => a + lambda * d).ToArray();
        Assert.True(Vectors.RelativeError(lhs, b) < 1e-6);
    }

    [Fact]
    public void No_tensors_leak()
    {
        long before = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        var samples = _world.Samples.Take(3).ToList();
        _runtime.PerSample(samples, _world.Theta, curvature: true, seed: 1);
        _runtime.Gradient(samples, _world.Theta);
        _runtime.HessianVectorProduct(samples, _world.Theta, _world.Theta);
        _runtime.Losses(samples, _world.Theta);
        _runtime.Evaluate(samples, _world.Theta);
        Assert.Equal(before, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        using (var model = _world.LoadModel(ComputePrecision.Float32))
            Assert.True(DisposeScopeManager.Statistics.ThreadTotalLiveCount > before);
        Assert.Equal(before, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }
}
