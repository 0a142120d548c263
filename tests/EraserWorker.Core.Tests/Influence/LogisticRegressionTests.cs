using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Core.Tests.TestSupport;
using Xunit.Abstractions;
using static EraserWorker.Core.Tests.TestSupport.DenseLinearAlgebra;

namespace EraserWorker.Core.Tests.Influence;

/// <summary>
/// Logistic regression, L(θ) = Σᵢ log(1 + exp(−yᵢxᵢᵀθ)) + (l2/2)‖θ‖²: convex, not quadratic. With exact
/// curvature factors cᵢ = √(σᵢ(1−σᵢ)) xᵢ the update is one Newton step on the edited objective from θ₀, so
/// (Newton's local bound, plus the stored θ₀'s residual gradient ε):
///     ‖θ' − θ*‖ ≤ (L_H / 2μ)‖θ₀ − θ*‖² + ‖ε‖/μ,
/// with μ = l2 (the data Hessian is PSD) and L_H = max|φ'''| Σ_active ‖xᵢ‖³ the Hessian's Lipschitz constant,
/// max|φ'''| = 1/(6√3). θ* is true retraining: Newton to convergence on the edited data.
/// </summary>
public sealed class LogisticRegressionTests(ITestOutputHelper output)
{
    private const double L2 = 4.0;
    private static readonly double MaxThirdDerivative = 1 / (6 * Math.Sqrt(3));

    private sealed record Sample(string Id, double[] X, double Y);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Update_is_within_the_newton_bound_of_retraining(bool flipLabels)
    {
        using var temp = new TempFolder();
        var random = new Random(21);
        var parameters = new List<ParameterSpec> { new(RidgeProblem.NameA, [2, 5]), new(RidgeProblem.NameB, [3, 2]) };
        int p = 16, n = 120;
        var truthDirection = Enumerable.Range(0, p).Select(_ => Gaussian(random)).ToArray();
        var samples = Enumerable.Range(0, n).Select(i =>
        {
            var x = Enumerable.Range(0, p).Select(_ => Gaussian(random) * 0.5).ToArray();
            double prob = Sigmoid(Dot(x, truthDirection));
            return new Sample($"row-{i}", x, random.NextDouble() < prob ? 1 : -1);
        }).ToList();

        // θ₀ as the adapter stores it (float32), and the residual gradient that rounding leaves.
        var theta0 = Train(samples, new double[p]).Select(v => (double)(float)v).ToArray();
        var epsilon = Gradient(samples, theta0);

        WriteAdapter(temp.Sub("adapter"), theta0);
        using (var writer = GradientCacheWriter.Create(temp.Sub("cache"), parameters, L2, "F32", true, 50))
        {
            foreach (var s in samples)
                writer.Append(s.Id, SampleGradient(s, theta0), CurvatureFactor(s, theta0));
            writer.Complete();
        }

        var removed = samples.Take(8).Select(s => s.Id).ToHashSet();
        var flipped = flipLabels ? samples.Skip(8).Take(6).Select(s => s with { Y = -s.Y }).ToList() : [];
        string? replacementsDir = null;
        if (flipLabels)
        {
            replacementsDir = temp.Sub("replacements");
            using var writer = GradientCacheWriter.Create(replacementsDir, parameters, L2, "F32", true, 4);
            foreach (var s in flipped)
                writer.Append(s.Id, SampleGradient(s, theta0), CurvatureFactor(s, theta0));
            writer.Complete();
        }

        var update = OfflineUnlearning.Run(new OfflineUnlearningJob(temp.Sub("adapter"), temp.Sub("cache"), removed,
            replacementsDir, temp.Sub("out"), new SolverOptions { Solver = SolverKind.Direct },
            new ComputeOptions { Device = "cpu", Precision = ComputePrecision.Float64 }));

        var edited = samples.Where(s => !removed.Contains(s.Id))
            .Select(s => flipped.FirstOrDefault(f => f.Id == s.Id) ?? s).ToList();
        var retrained = Train(edited, theta0);
        double lipschitz = MaxThirdDerivative * edited.Sum(s => Math.Pow(Norm(s.X), 3));
        double shift = Distance(retrained, theta0);
        double bound = lipschitz / (2 * L2) * shift * shift + Norm(epsilon) / L2;
        double error = Distance(update.Theta, retrained);
        output.WriteLine($"‖θ'−θ*‖ = {error:E3}, bound {bound:E3}, ‖θ₀−θ*‖ = {shift:E3}, ‖ε‖ = {Norm(epsilon):E2}");
        Assert.True(error <= bound, $"error {error:E3} exceeds the Newton bound {bound:E3}");
        Assert.True(error <= 0.1 * shift, $"the update should recover most of the shift (error {error:E3}, shift {shift:E3})");
    }

    private static void WriteAdapter(string directory, double[] theta)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, "adapter_config.json"), "{\"peft_type\":\"LORA\",\"r\":2}");
        IndependentSafetensors.Write(Path.Combine(directory, "adapter_model.safetensors"),
        [
            IndependentSafetensors.F32(RidgeProblem.NameA, [2, 5], theta.Take(10)),
            IndependentSafetensors.F32(RidgeProblem.NameB, [3, 2], theta.Skip(10)),
        ]);
    }

    private static double Sigmoid(double z) => 1 / (1 + Math.Exp(-z));

    private static double Gaussian(Random r) => Math.Sqrt(-2 * Math.Log(1 - r.NextDouble())) * Math.Cos(2 * Math.PI * r.NextDouble());

    private static double[] SampleGradient(Sample s, double[] theta)
    {
        double coefficient = -s.Y * Sigmoid(-s.Y * Dot(s.X, theta));
        return s.X.Select(v => coefficient * v).ToArray();
    }

    private static double[] CurvatureFactor(Sample s, double[] theta)
    {
        double sigma = Sigmoid(Dot(s.X, theta));
        double scale = Math.Sqrt(sigma * (1 - sigma));
        return s.X.Select(v => scale * v).ToArray();
    }

    private static double[] Gradient(IReadOnlyList<Sample> samples, double[] theta)
    {
        var g = theta.Select(v => L2 * v).ToArray();
        foreach (var s in samples)
        {
            var gi = SampleGradient(s, theta);
            for (int j = 0; j < g.Length; j++)
                g[j] += gi[j];
        }
        return g;
    }

    /// <summary>Newton's method to machine precision: the retraining oracle.</summary>
    private static double[] Train(IReadOnlyList<Sample> samples, double[] start)
    {
        var theta = (double[])start.Clone();
        int p = theta.Length;
        for (int iteration = 0; iteration < 100; iteration++)
        {
            var g = Gradient(samples, theta);
            if (Norm(g) < 1e-13)
                break;
            var h = new double[p, p];
            for (int a = 0; a < p; a++)
                h[a, a] = L2;
            foreach (var s in samples)
            {
                var c = CurvatureFactor(s, theta);
                for (int a = 0; a < p; a++)
                    for (int b = 0; b < p; b++)
                        h[a, b] += c[a] * c[b];
            }
            var step = SolveSpd(h, g);
            for (int j = 0; j < p; j++)
                theta[j] -= step[j];
        }
        return theta;
    }
}
