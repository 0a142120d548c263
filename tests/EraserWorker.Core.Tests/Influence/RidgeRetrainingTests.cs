using EraserWorker.Core.Compute;
using EraserWorker.Core.Influence;
using EraserWorker.Core.Tests.TestSupport;
using Xunit.Abstractions;
using static EraserWorker.Core.Tests.TestSupport.DenseLinearAlgebra;

namespace EraserWorker.Core.Tests.Influence;

/// <summary>SPEC §1's oracle: on ridge regression the update equals exact retraining on the edited data.</summary>
public sealed class RidgeRetrainingTests(ITestOutputHelper output)
{
    public enum Geometry
    {
        /// <summary>P = 20 parameters, 60 samples: the direct solver works in parameter space.</summary>
        MoreSamples,
        /// <summary>P = 80 parameters, 30 samples: the direct solver works in sample space (Woodbury).</summary>
        MoreParameters,
    }

    private static RidgeProblem Build(Geometry geometry, int seed = 7) => geometry == Geometry.MoreSamples
        ? new RidgeProblem(samples: 60, rank: 2, inFeatures: 6, outFeatures: 4, seed: seed)
        : new RidgeProblem(samples: 30, rank: 4, inFeatures: 12, outFeatures: 8, seed: seed);

    private static double Tolerance(ComputePrecision precision) => precision == ComputePrecision.Float64 ? 1e-6 : 1e-4;

    public static TheoryData<Geometry, string, bool, ComputePrecision, string> Cases()
    {
        var data = new TheoryData<Geometry, string, bool, ComputePrecision, string>();
        foreach (var geometry in Enum.GetValues<Geometry>())
            foreach (var dtype in new[] { "F32", "F16", "BF16" })
                foreach (var curvature in new[] { true, false })
                    foreach (var precision in Enum.GetValues<ComputePrecision>())
                        data.Add(geometry, dtype, curvature, precision, "direct");
        foreach (var geometry in Enum.GetValues<Geometry>())
            foreach (var solver in new[] { "cg", "auto" })
                foreach (var precision in Enum.GetValues<ComputePrecision>())
                    data.Add(geometry, "F16", true, precision, solver);
        return data;
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Mixed_removal_and_replacement_equals_retraining(Geometry geometry, string dtype, bool curvature,
        ComputePrecision precision, string solver)
    {
        using var temp = new TempFolder();
        var problem = Build(geometry);
        problem.WriteAdapter(temp.Sub("adapter"));
        problem.WriteCache(temp.Sub("cache"), dtype, curvature, rowsPerShard: 7);
        var removed = new HashSet<string> { problem.Ids[0], problem.Ids[3], problem.Ids[11] };
        var corrections = new Dictionary<string, (double[] X, double Y, double R)>
        {
            [problem.Ids[5]] = problem.Correction(),
            [problem.Ids[17]] = problem.Correction(),
        };
        RidgeProblem.WriteReplacements(temp.Sub("replacements"), problem.Parameters, problem.L2, corrections, dtype, curvature);

        var update = OfflineUnlearning.Run(new OfflineUnlearningJob(temp.Sub("adapter"), temp.Sub("cache"), removed,
            temp.Sub("replacements"), temp.Sub("out"), new SolverOptions { Solver = SolverOptions.ParseKind(solver) },
            new ComputeOptions { Device = "cpu", Precision = precision }));

        var truth = problem.Retrain(removed, corrections);
        double shift = Distance(truth, problem.Theta0);
        double error = Distance(update.Theta, truth) / shift;
        output.WriteLine($"{solver} ({update.Report.Method}) relative error {error:E2}, residual {update.Report.RelativeResidual:E2}, shift {shift:G4}");
        Assert.True(shift > 0.1, "the edit must move the parameters noticeably for the check to mean anything");
        Assert.True(error <= Tolerance(precision), $"relative error {error:E3} > {Tolerance(precision):E0}");
        Assert.True(update.Report.RelativeResidual <= 10 * Tolerance(precision));
        Assert.Equal(0, update.Report.Damping); // l2 > 0: SPEC's default damping is 0

        // The written adapter holds θ' in the cache's order, mapped back to each tensor, rounded to F32.
        var file = Path.Combine(temp.Sub("out"), "adapter_model.safetensors");
        var written = IndependentSafetensors.ReadF32(file, RidgeProblem.NameA)
            .Concat(IndependentSafetensors.ReadF32(file, RidgeProblem.NameB)).ToArray();
        Assert.Equal(update.Theta.Select(v => (double)(float)v), written);
        Assert.Equal(problem.FrozenValues.Select(v => (double)(float)v), IndependentSafetensors.ReadF32(file, RidgeProblem.FrozenName));
        Assert.Equal(File.ReadAllBytes(Path.Combine(temp.Sub("adapter"), "adapter_config.json")),
            File.ReadAllBytes(Path.Combine(temp.Sub("out"), "adapter_config.json")));
    }

    [Theory]
    [InlineData(Geometry.MoreSamples)]
    [InlineData(Geometry.MoreParameters)]
    public void Removal_only_and_replacement_only_equal_retraining(Geometry geometry)
    {
        using var temp = new TempFolder();
        var problem = Build(geometry, seed: 3);
        problem.WriteAdapter(temp.Sub("adapter"));
        problem.WriteCache(temp.Sub("cache"));
        var compute = new ComputeOptions { Device = "cpu", Precision = ComputePrecision.Float64 };

        var removed = new HashSet<string>(problem.Ids.Take(4));
        var removal = OfflineUnlearning.Run(new OfflineUnlearningJob(temp.Sub("adapter"), temp.Sub("cache"), removed, null,
            temp.Sub("out-remove"), new SolverOptions { Solver = SolverKind.Direct }, compute));
        var truth = problem.Retrain(removed, new Dictionary<string, (double[], double, double)>());
        Assert.True(Distance(removal.Theta, truth) / Distance(truth, problem.Theta0) <= 1e-6);

        var corrections = new Dictionary<string, (double[] X, double Y, double R)> { [problem.Ids[9]] = problem.Correction() };
        RidgeProblem.WriteReplacements(temp.Sub("replacements"), problem.Parameters, problem.L2, corrections);
        var replacement = OfflineUnlearning.Run(new OfflineUnlearningJob(temp.Sub("adapter"), temp.Sub("cache"), [],
            temp.Sub("replacements"), temp.Sub("out-replace"), new SolverOptions { Solver = SolverKind.Direct }, compute));
        var truthReplaced = problem.Retrain(new HashSet<string>(), corrections);
        Assert.True(Distance(replacement.Theta, truthReplaced) / Distance(truthReplaced, problem.Theta0) <= 1e-6);
    }
}
