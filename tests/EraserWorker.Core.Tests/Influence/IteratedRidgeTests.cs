using EraserWorker.Contracts;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Core.Influence.Iterated;
using EraserWorker.Core.Tests.TestSupport;
using TorchSharp;
using static EraserWorker.Core.Tests.TestSupport.DenseLinearAlgebra;

namespace EraserWorker.Core.Tests.Influence;

/// <summary>
/// The iterated update on ridge regression (docs/spec.md §1.6): F is exactly quadratic, so the first Gauss–Newton step —
/// SPEC §1.2's update — is its minimiser, the iteration stops there, and θ' equals exact retraining. Also the option
/// checks, the one-step fallbacks, determinism and tensor hygiene.
/// </summary>
public sealed class IteratedRidgeTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    /// <summary>The corrected ridge samples' exact loss ½(xᵀθ − y)², with its exact curvature row x.</summary>
    private sealed class RidgeCorrections(IReadOnlyDictionary<string, (double[] X, double Y, double R)> corrections) : IEditedSampleLoss
    {
        public IReadOnlyList<string> SampleIds { get; } = corrections.Keys.ToList();

        public double Value(double[] theta) => corrections.Values.Sum(c => 0.5 * Math.Pow(Dot(c.X, theta) - c.Y, 2));

        public EditedSampleEvaluation Evaluate(double[] theta)
        {
            var gradient = new double[theta.Length];
            foreach (var c in corrections.Values)
            {
                double residual = Dot(c.X, theta) - c.Y;
                for (int j = 0; j < gradient.Length; j++)
                    gradient[j] += residual * c.X[j];
            }
            return new EditedSampleEvaluation(Value(theta), gradient, corrections.Values.Select(c => c.X).ToList());
        }
    }

    private (RidgeProblem Problem, InfluenceEngine Engine, Dictionary<string, (double[] X, double Y, double R)> Corrections) Build(
        bool moreParameters, ComputePrecision precision, RowResidency residency = RowResidency.Auto)
    {
        var problem = moreParameters
            ? new RidgeProblem(samples: 30, rank: 4, inFeatures: 12, outFeatures: 8, seed: 5)
            : new RidgeProblem(samples: 60, rank: 2, inFeatures: 6, outFeatures: 4, seed: 5);
        problem.WriteAdapter(_temp.Sub("adapter"));
        problem.WriteCache(_temp.Sub("cache"));
        var corrections = new Dictionary<string, (double[] X, double Y, double R)>
        {
            [problem.Ids[3]] = problem.Correction(),
            [problem.Ids[11]] = problem.Correction(),
        };
        RidgeProblem.WriteReplacements(_temp.Sub("rep"), problem.Parameters, problem.L2, corrections);
        var engine = InfluenceEngine.Load(PeftAdapter.Open(_temp.Sub("adapter")), GradientCache.Open(_temp.Sub("cache")),
            new ComputeOptions { Device = "cpu", Precision = precision, Residency = residency });
        return (problem, engine, corrections);
    }

    public static TheoryData<bool, ComputePrecision, RowResidency, string> Cases() => new()
    {
        { false, ComputePrecision.Float64, RowResidency.Resident, "direct" },
        { true, ComputePrecision.Float64, RowResidency.Resident, "direct" },
        { true, ComputePrecision.Float32, RowResidency.Resident, "direct" },
        { true, ComputePrecision.Float32, RowResidency.Streamed, "auto" },
        { false, ComputePrecision.Float64, RowResidency.Streamed, "cg" },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public void Iteration_stops_after_the_first_step_and_equals_exact_retraining(bool moreParameters, ComputePrecision precision,
        RowResidency residency, string solver)
    {
        var (problem, engine, corrections) = Build(moreParameters, precision, residency);
        using var _ = engine;
        using var replacements = GradientCache.Open(_temp.Sub("rep"));
        var removed = new[] { problem.Ids[0], problem.Ids[7] };
        var edits = EditSet.Empty.Remove(removed).Replace(corrections.Keys, "rep");
        var options = new SolverOptions { Solver = SolverOptions.ParseKind(solver) };

        var iterated = IteratedUnlearning.Compute(engine, edits, _ => replacements, new RidgeCorrections(corrections), options, new IteratedOptions());
        var oneStep = engine.Compute(edits, _ => replacements, options);
        var retrained = problem.Retrain(removed.ToHashSet(), corrections);

        double shift = Distance(retrained, problem.Theta0);
        double tolerance = precision == ComputePrecision.Float64 ? 1e-9 : 1e-5;
        Assert.Equal("iterated", iterated.Update!.Method);
        Assert.Equal(1, iterated.Update.Iterations);
        Assert.Equal("converged-gradient", iterated.Update.StopReason);
        Assert.True(Distance(iterated.Theta, retrained) <= tolerance * shift, $"‖θ'−θ*‖ = {Distance(iterated.Theta, retrained):E3}, shift {shift:E3}");
        Assert.True(Distance(iterated.Theta, oneStep.Theta) <= tolerance * shift, "the first step is the one-step update");
        Assert.Single(iterated.Update.Objective);
        Assert.True(iterated.Update.Objective[0] < 0, "the accepted step lowers F below F(θ₀) = 0");
        Assert.Equal(Distance(iterated.Theta, problem.Theta0), iterated.Update.UpdateNorm, 1e-12);
        Assert.Equal(iterated.Update.UpdateNorm, iterated.Update.FinalStepNorm, 1e-12);
    }

    [Fact]
    public void Reported_objective_and_predicted_change_match_a_dense_float64_construction()
    {
        var (problem, engine, corrections) = Build(moreParameters: false, ComputePrecision.Float64);
        using var _ = engine;
        var removed = new[] { problem.Ids[0] };
        var edits = EditSet.Empty.Remove(removed).Replace(corrections.Keys, "rep");
        var loss = new RidgeCorrections(corrections);
        var update = IteratedUnlearning.Compute(engine, edits, null, loss, new SolverOptions(), new IteratedOptions());

        // F(θ') = −bᵀd + ½dᵀ(H_A + λI)d + ℓ'(θ') − ℓ'(θ₀), built here from the problem's own vectors.
        var d = Subtract(update.Theta, problem.Theta0);
        var edited = removed.Concat(corrections.Keys).ToHashSet();
        double f = 0.5 * problem.L2 * Dot(d, d) + loss.Value(update.Theta) - loss.Value(problem.Theta0);
        double predicted = 0;
        for (int i = 0; i < problem.Ids.Length; i++)
        {
            if (edited.Contains(problem.Ids[i]))
            {
                f -= Dot(problem.Gradient(i), d);
                if (removed.Contains(problem.Ids[i]))
                    predicted += Dot(problem.Gradient(i), d);
            }
            else
                f += 0.5 * Math.Pow(Dot(problem.X[i], d), 2);
        }
        predicted += Dot(loss.Evaluate(problem.Theta0).Gradient, d);
        Assert.Equal(f, update.Update!.Objective[^1], 1e-9 * Math.Abs(f));
        Assert.Equal(predicted, update.Update.PredictedEditedLossChange, 1e-9 * Math.Abs(predicted));
        Assert.Equal(loss.Value(update.Theta) - loss.Value(problem.Theta0), update.Update.EditedLossChange!.Value, 1e-9);
    }

    [Fact]
    public void Removals_alone_need_no_loss_and_give_retraining_in_one_step()
    {
        var (problem, engine, _) = Build(moreParameters: true, ComputePrecision.Float64);
        using var __ = engine;
        var removed = problem.Ids.Take(6).ToArray();
        var update = IteratedUnlearning.Compute(engine, EditSet.Empty.Remove(removed), null, null, new SolverOptions(), new IteratedOptions());
        var retrained = problem.Retrain(removed.ToHashSet(), new Dictionary<string, (double[] X, double Y, double R)>());
        Assert.Equal(1, update.Update!.Iterations);
        Assert.Null(update.Update.EditedLossChange);
        Assert.True(Distance(update.Theta, retrained) <= 1e-9 * Distance(retrained, problem.Theta0));
    }

    [Fact]
    public void Replacements_as_rows_only_and_the_one_step_setting_run_the_one_step_update_and_say_so()
    {
        var (problem, engine, corrections) = Build(moreParameters: false, ComputePrecision.Float64);
        using var _ = engine;
        using var replacements = GradientCache.Open(_temp.Sub("rep"));
        var edits = EditSet.Empty.Replace(corrections.Keys, "rep");
        var expected = engine.Compute(edits, _ => replacements, new SolverOptions());

        var rowsOnly = IteratedUnlearning.Compute(engine, edits, _ => replacements, null, new SolverOptions(), new IteratedOptions());
        var asked = IteratedUnlearning.Compute(engine, edits, _ => replacements, new RidgeCorrections(corrections), new SolverOptions(),
            new IteratedOptions { Method = UpdateMethod.OneStep });
        Assert.Equal(("one-step", "no-texts", 1), (rowsOnly.Update!.Method, rowsOnly.Update.StopReason, rowsOnly.Update.Iterations));
        Assert.Equal(("one-step", "one-step"), (asked.Update!.Method, asked.Update.StopReason));
        Assert.Equal(expected.Theta, rowsOnly.Theta);
        Assert.Equal(expected.Theta, asked.Theta);
        // Rows at θ₀ of the corrected samples: Σ g'ᵢᵀΔ is the same whether read from the set or recomputed.
        var recomputed = Dot(new RidgeCorrections(corrections).Evaluate(problem.Theta0).Gradient, Subtract(expected.Theta, problem.Theta0));
        Assert.Equal(recomputed, asked.Update.PredictedEditedLossChange, 1e-9 * Math.Abs(recomputed));
    }

    [Fact]
    public void Invalid_options_and_mismatched_samples_are_refused_with_the_setting_named()
    {
        var (problem, engine, corrections) = Build(moreParameters: false, ComputePrecision.Float64);
        using var _ = engine;
        var edits = EditSet.Empty.Replace(corrections.Keys, "rep");
        var loss = new RidgeCorrections(corrections);
        UnlearningException Refused(IteratedOptions options, SolverOptions? solver = null, IEditedSampleLoss? with = null, EditSet? set = null) =>
            Assert.Throws<UnlearningException>(() => IteratedUnlearning.Compute(engine, set ?? edits, null, with ?? loss, solver ?? new SolverOptions(), options));

        var zero = Refused(new IteratedOptions { MaxIterations = 0, DecreaseTolerance = 2 });
        Assert.Equal(FailureCodes.InvalidRequest, zero.Code);
        Assert.Contains("MaxIterations must be in [1, 1000] (got 0)", zero.Message);
        Assert.Contains("DecreaseTolerance must be in (0, 1) (got 2)", zero.Message);
        Assert.Contains("InitialTrustDamping", Refused(new IteratedOptions { InitialTrustDamping = double.NaN }).Message);
        Assert.Contains("GradientTolerance", Refused(new IteratedOptions { GradientTolerance = 0 }).Message);
        Assert.Contains("llmeraser", Refused(new IteratedOptions(), new SolverOptions { Solver = SolverKind.LlmEraser }).Message);
        var mismatch = Refused(new IteratedOptions(), set: EditSet.Empty.Replace([problem.Ids[3], problem.Ids[5]], "rep"));
        Assert.Equal(FailureCodes.InvalidRequest, mismatch.Code);
        Assert.Contains("must be the same ids", mismatch.Message);

        Assert.Throws<ArgumentException>(() => new IteratedOptions { MaxRejections = 0 }.Validate());
        Assert.Throws<ArgumentException>(() => IteratedOptions.ParseMethod("twoStep"));
        Assert.Equal(UpdateMethod.OneStep, IteratedOptions.ParseMethod("oneStep"));
        Assert.Equal(UpdateMethod.Iterated, IteratedOptions.ParseMethod("iterated"));
    }

    [Fact]
    public void Iterated_updates_leak_no_tensors_and_are_bit_for_bit_repeatable()
    {
        var (problem, engine, corrections) = Build(moreParameters: true, ComputePrecision.Float32);
        using var _ = engine;
        var edits = EditSet.Empty.Remove([problem.Ids[1]]).Replace(corrections.Keys, "rep");
        var loss = new RidgeCorrections(corrections);
        var first = IteratedUnlearning.Compute(engine, edits, null, loss, new SolverOptions(), new IteratedOptions());
        long warm = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        var second = IteratedUnlearning.Compute(engine, edits, null, loss, new SolverOptions { Solver = SolverKind.Cg }, new IteratedOptions());
        var third = IteratedUnlearning.Compute(engine, edits, null, loss, new SolverOptions(), new IteratedOptions());
        Assert.Throws<UnlearningException>(() => IteratedUnlearning.Compute(engine, edits, null, loss,
            new SolverOptions { Solver = SolverKind.Cg, MaxIterations = 1 }, new IteratedOptions()));
        Assert.Equal(warm, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        Assert.Equal(first.Theta, third.Theta);
        Assert.True(Distance(first.Theta, second.Theta) <= 1e-5 * first.UpdateNorm);
    }
}
