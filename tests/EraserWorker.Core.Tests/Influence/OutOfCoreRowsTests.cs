using EraserWorker.Contracts;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Core.Tests.TestSupport;
using TorchSharp;
using Xunit.Abstractions;
using static EraserWorker.Core.Tests.TestSupport.DenseLinearAlgebra;

namespace EraserWorker.Core.Tests.Influence;

/// <summary>
/// Rows streamed from the cache files (a budget too small for them) against rows held in memory: the same solution,
/// the passes and memory the plan promises, the Gram kept beside the cache and reused only when it matches.
/// </summary>
public sealed class OutOfCoreRowsTests(ITestOutputHelper output) : IDisposable
{
    /// <summary>Far below any test cache: forces streaming under <c>Auto</c>.</summary>
    private const long TinyBudget = 8 << 10;

    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    /// <summary>n = 30 < P = 80: the direct solver works in sample space (Woodbury).</summary>
    private static RidgeProblem Woodbury(int seed = 7) => new(samples: 30, rank: 4, inFeatures: 12, outFeatures: 8, seed: seed);

    private InfluenceEngine Open(string name, long budget, bool persist = false, int rowsPerChunk = 256) =>
        InfluenceEngine.Load(PeftAdapter.Open(_temp.Sub("adapter")), GradientCache.Open(_temp.Sub(name)),
            new ComputeOptions { Device = "cpu", MemoryBudgetBytes = budget, PersistGram = persist, RowsPerChunk = rowsPerChunk });

    private (EditSet Edits, Dictionary<string, (double[] X, double Y, double R)> Corrections, GradientCache Replacements) Edits(
        RidgeProblem problem, string dtype)
    {
        var corrections = new Dictionary<string, (double[] X, double Y, double R)>
        {
            [problem.Ids[5]] = problem.Correction(),
            [problem.Ids[17]] = problem.Correction(),
        };
        RidgeProblem.WriteReplacements(_temp.Sub("rep"), problem.Parameters, problem.L2, corrections, dtype);
        var edits = EditSet.Empty.Remove([problem.Ids[0], problem.Ids[3], problem.Ids[11]]).Replace(corrections.Keys, "rep");
        return (edits, corrections, GradientCache.Open(_temp.Sub("rep")));
    }

    [Theory]
    [InlineData("direct", "F16")]
    [InlineData("direct", "BF16")]
    [InlineData("direct", "F32")]
    [InlineData("cg", "F16")]
    [InlineData("llmeraser", "F16")]
    public void Streamed_rows_give_the_resident_solution(string solver, string dtype)
    {
        var problem = Woodbury();
        problem.WriteAdapter(_temp.Sub("adapter"));
        problem.WriteCache(_temp.Sub("cache"), dtype, rowsPerShard: 7);
        var (edits, corrections, replacements) = Edits(problem, dtype);
        using var replacementSet = replacements;
        var options = new SolverOptions
        {
            Solver = SolverOptions.ParseKind(solver),
            Tolerance = 1e-12,
            LlmEraser = new LlmEraserOptions { LearningRate = 0.01, InitialValue = 0, WeightDecay = 0, Iterations = 200, BatchSize = 8 },
            // The paper's solver only gets near the solution; its streamed and resident runs are compared as they are.
            RequireConvergence = solver != "llmeraser",
        };

        using var resident = Open("cache", budget: 1L << 30);
        // Blocks of 4 rows against shards of 7: blocks straddle shard boundaries.
        using var streamed = Open("cache", TinyBudget, rowsPerChunk: 4);
        Assert.Equal(RowResidency.Resident, resident.RowPlan.Residency);
        Assert.Equal(dtype, resident.RowPlan.HoldDType); // held as stored: F16/BF16 take half of float32's memory
        Assert.Equal((long)problem.Ids.Length * problem.P * (dtype == "F32" ? 4 : 2), resident.RowPlan.RowBytes);
        Assert.Equal(RowResidency.Streamed, streamed.RowPlan.Residency);
        Assert.Contains("exceed", streamed.RowPlan.Reason);

        var a = resident.Compute(edits, _ => replacements, options);
        var b = streamed.Compute(edits, _ => replacements, options);
        double shift = Distance(a.Theta, problem.Theta0);
        double difference = Distance(a.Theta, b.Theta) / shift;
        output.WriteLine($"{solver} {dtype}: resident {a.Report.Method} residual {a.Report.RelativeResidual:E2}, streamed residual {b.Report.RelativeResidual:E2}, relative difference {difference:E2}");
        Assert.True(difference <= 1e-12, $"streamed and resident solutions differ by {difference:E2}");
        Assert.Equal("streamed", b.Report.Rows!.Residency);
        Assert.Equal("resident", a.Report.Rows!.Residency);
        Assert.Equal(0, a.Report.Rows.BytesRead);
        Assert.True(b.Report.Rows.BytesRead > 0);
        if (solver == "llmeraser")
            return; // the paper's solver is not exact; equality to the resident path is what is checked

        var truth = problem.Retrain(edits.Removed.ToHashSet(), corrections);
        Assert.True(Distance(b.Theta, truth) / Distance(truth, problem.Theta0) <= 1e-9);
        // The reported residual is the true one: recomputed here from θ' with a dense float64 H' and b.
        double dense = DenseRelativeResidual(problem, edits, corrections, b.Theta, b.Report.Lambda);
        output.WriteLine($"reported {b.Report.RelativeResidual:E3}, dense {dense:E3}");
        Assert.True(Math.Abs(b.Report.RelativeResidual - dense) <= 1e-13 + 1e-3 * dense);
    }

    [Fact]
    public void Streamed_rows_give_the_resident_solution_in_parameter_space()
    {
        // n = 60 > P = 20: the direct solver builds H' (P × P) from one pass over the row blocks.
        var problem = new RidgeProblem(samples: 60, rank: 2, inFeatures: 6, outFeatures: 4, seed: 8);
        problem.WriteAdapter(_temp.Sub("adapter"));
        problem.WriteCache(_temp.Sub("cache"), "BF16", rowsPerShard: 9);
        var (edits, corrections, replacements) = Edits(problem, "BF16");
        using var replacementSet = replacements;
        using var resident = Open("cache", 1L << 30);
        using var streamed = Open("cache", 2 << 10, rowsPerChunk: 4);
        Assert.Equal(RowResidency.Streamed, streamed.RowPlan.Residency);
        var a = resident.Compute(edits, _ => replacementSet, new SolverOptions { Solver = SolverKind.Direct });
        var b = streamed.Compute(edits, _ => replacementSet, new SolverOptions { Solver = SolverKind.Direct });
        Assert.Equal("parameter-space", b.Report.Method);
        var truth = problem.Retrain(edits.Removed.ToHashSet(), corrections);
        double shift = Distance(truth, problem.Theta0);
        Assert.True(Distance(a.Theta, b.Theta) / shift <= 1e-12);
        Assert.True(Distance(b.Theta, truth) / shift <= 1e-9);
    }

    [Theory]
    [InlineData(ComputePrecision.Float64)]
    [InlineData(ComputePrecision.Float32)]
    public void Tensor_products_a_gpu_runs_give_the_kernels_solution(ComputePrecision precision)
    {
        // Rows held as float64 on the CPU take the tensor path (block.to(compute dtype), mv, float64 sums) that
        // resident rows on a GPU take; loading them converts through a staging chunk as a GPU load does.
        var problem = Woodbury(seed: 21);
        problem.WriteAdapter(_temp.Sub("adapter"));
        problem.WriteCache(_temp.Sub("cache"), "F16");
        var (edits, corrections, replacements) = Edits(problem, "F16");
        using var replacementSet = replacements;
        var compute = new ComputeOptions { Device = "cpu", Precision = precision, PersistGram = false };
        using var kernels = Open("cache", 1L << 30);
        using var tensors = InfluenceEngine.Load(PeftAdapter.Open(_temp.Sub("adapter")), GradientCache.Open(_temp.Sub("cache")),
            compute, plan => plan with { HoldDType = "F64", RowBytes = plan.RowBytes * 4 });
        Assert.Equal("F64", tensors.RowPlan.HoldDType);
        var truth = problem.Retrain(edits.Removed.ToHashSet(), corrections);
        foreach (var kind in new[] { SolverKind.Direct, SolverKind.Cg })
        {
            var options = new SolverOptions { Solver = kind, Tolerance = precision == ComputePrecision.Float64 ? 1e-12 : 1e-6 };
            var a = kernels.Compute(edits, _ => replacementSet, options);
            var b = tensors.Compute(edits, _ => replacementSet, options);
            double shift = Distance(truth, problem.Theta0);
            output.WriteLine($"{precision} {kind}: kernels error {Distance(a.Theta, truth) / shift:E2}, tensors error {Distance(b.Theta, truth) / shift:E2}, residual {b.Report.RelativeResidual:E2}");
            Assert.True(Distance(b.Theta, truth) / shift <= (precision == ComputePrecision.Float64 ? 1e-9 : 1e-5));
            Assert.True(b.Report.RelativeResidual <= 10 * options.Tolerance!.Value);
        }
    }

    [Fact]
    public void Woodbury_residual_is_the_true_one_when_the_system_is_ill_conditioned()
    {
        // Duplicated rows and a tiny λ: forming x loses digits, and the reported residual must say so exactly as a
        // dense evaluation of ‖H'x − b‖/‖b‖ does (the two-pass identity's rounding bound is too large here, so the
        // solver evaluates it directly).
        var problem = Woodbury(seed: 3);
        problem.WriteAdapter(_temp.Sub("adapter"));
        using (var writer = GradientCacheWriter.Create(_temp.Sub("cache"), problem.Parameters, 0, "F32", true, 8))
        {
            for (int i = 0; i < problem.Ids.Length; i++)
                writer.Append(problem.Ids[i], problem.Gradient(i), problem.X[i % 6]);
            writer.Complete();
        }
        var edits = EditSet.Empty.Remove([problem.Ids[1], problem.Ids[2]]);
        using var engine = Open("cache", TinyBudget);
        // The default acceptance refuses this solve (its residual is above 1e-6); taken as it is, its reported residual is checked.
        var refused = Assert.Throws<UnlearningException>(() => engine.Compute(edits, null, new SolverOptions { Solver = SolverKind.Direct, Damping = 1e-9 }));
        Assert.Equal(FailureCodes.NumericalFailure, refused.Code);
        var update = engine.Compute(edits, null, new SolverOptions { Solver = SolverKind.Direct, Damping = 1e-9, RequireConvergence = false });
        // Curvature rows are X[i % 6]; the dense check must use those rows.
        var h = new double[problem.P, problem.P];
        for (int i = 0; i < problem.Ids.Length; i++)
        {
            if (edits.Removed.Contains(problem.Ids[i]))
                continue;
            var c = problem.X[i % 6];
            for (int j = 0; j < problem.P; j++)
                for (int k = 0; k < problem.P; k++)
                    h[j, k] += c[j] * c[k];
        }
        var delta = Subtract(update.Theta, problem.Theta0.Select(v => (double)(float)v).ToArray());
        var bVector = new double[problem.P];
        foreach (var id in edits.Removed)
        {
            var g = problem.Gradient(Array.IndexOf(problem.Ids, id));
            for (int j = 0; j < problem.P; j++)
                bVector[j] += g[j];
        }
        var residual = new double[problem.P];
        for (int j = 0; j < problem.P; j++)
        {
            double sum = update.Report.Lambda * delta[j];
            for (int k = 0; k < problem.P; k++)
                sum += h[j, k] * delta[k];
            residual[j] = sum - bVector[j];
        }
        double dense = Norm(residual) / Norm(bVector);
        output.WriteLine($"λ = {update.Report.Lambda:E1}: reported residual {update.Report.RelativeResidual:E3}, dense {dense:E3}");
        Assert.Equal("woodbury", update.Report.Method);
        // Woodbury's two passes and — here — one direct residual pass (the Gram was built by the refused solve before).
        Assert.Equal(3, update.Report.Rows!.Passes);
        Assert.True(dense > 1e-12, "the case must be hard enough for the residual to be visible");
        Assert.True(Math.Abs(update.Report.RelativeResidual - dense) <= 0.05 * dense,
            $"reported {update.Report.RelativeResidual:E3} but ‖H'x − b‖/‖b‖ = {dense:E3}");
    }

    [Fact]
    public void Warm_woodbury_reads_the_streamed_rows_twice_and_stays_within_the_budget()
    {
        // n = 24, P = 1024 in F32: 96 KiB of rows against a 32 KiB budget.
        var problem = new RidgeProblem(samples: 24, rank: 8, inFeatures: 64, outFeatures: 64, seed: 5);
        problem.WriteAdapter(_temp.Sub("adapter"));
        problem.WriteCache(_temp.Sub("cache"));
        const long budget = 32 << 10;
        using var engine = Open("cache", budget);
        var plan = engine.RowPlan;
        output.WriteLine(plan.ToString());
        Assert.Equal(RowResidency.Streamed, plan.Residency);
        Assert.True(plan.GramFits);
        Assert.True(plan.PlannedBytes <= budget);

        var cold = engine.Compute(EditSet.Empty.Remove(problem.Ids.Take(2)), null, new SolverOptions { Solver = SolverKind.Auto });
        Assert.Equal("direct", cold.Report.Solver);
        Assert.Equal(3, cold.Report.Rows!.Passes); // the Gram's panels, then the two passes of Woodbury
        var warm = engine.Compute(EditSet.Empty.Remove(problem.Ids.Skip(2).Take(3)), null, new SolverOptions { Solver = SolverKind.Direct });
        long rowBytes = problem.Ids.Length * (long)problem.P * 4;
        Assert.Equal(2, warm.Report.Rows!.Passes);
        Assert.Equal(2 * rowBytes, warm.Report.Rows.BytesRead);
        var cg = engine.Compute(EditSet.Empty.Remove(problem.Ids.Take(1)), null, new SolverOptions { Solver = SolverKind.Cg, Tolerance = 1e-12 });
        Assert.True(cg.Report.RelativeResidual <= 1e-12);

        // Bytes held, not time: the Gram after the solves, and never more than the budget at any moment.
        Assert.Equal(24 * 24 * 8, warm.Report.Rows.HeldBytes);
        Assert.True(cg.Report.Rows!.PeakBytes <= budget, $"peak {cg.Report.Rows.PeakBytes} B > budget {budget} B");
        Assert.True(cg.Report.Rows.PeakBytes >= 2 * problem.P * 4, "the ledger must have seen the two block buffers");
        var truth = problem.Retrain(problem.Ids.Skip(2).Take(3).ToHashSet(), new Dictionary<string, (double[], double, double)>());
        Assert.True(Distance(warm.Theta, truth) / Distance(truth, problem.Theta0) <= 1e-9);
    }

    [Fact]
    public void Gram_is_kept_beside_the_cache_reused_after_a_restart_and_rebuilt_when_stale_or_corrupt()
    {
        var problem = Woodbury(seed: 11);
        problem.WriteAdapter(_temp.Sub("adapter"));
        problem.WriteCache(_temp.Sub("cache"), "F16");
        var edits = EditSet.Empty.Remove(problem.Ids.Skip(4).Take(5));
        var direct = new SolverOptions { Solver = SolverKind.Direct };
        string file = Path.Combine(_temp.Sub("cache"), "derived", "gram.safetensors");

        double[] first;
        using (var engine = Open("cache", TinyBudget, persist: true))
        {
            var update = engine.Compute(edits, null, direct);
            Assert.StartsWith("built, saved to", engine.GramStatus);
            first = update.Theta;
        }
        Assert.True(File.Exists(file));

        // Restarted, resident and streamed alike: loaded, not rebuilt; the same solution.
        foreach (long budget in new[] { TinyBudget, 1L << 30 })
            using (var engine = Open("cache", budget, persist: true))
            {
                var update = engine.Compute(edits, null, direct);
                Assert.StartsWith("loaded from", engine.GramStatus);
                Assert.True(Distance(update.Theta, first) <= 1e-12 * Distance(first, problem.Theta0));
            }

        // Corrupt: one byte of the matrix changed, its header intact.
        var bytes = File.ReadAllBytes(file);
        bytes[^5] ^= 0x40;
        File.WriteAllBytes(file, bytes);
        using (var engine = Open("cache", TinyBudget, persist: true))
        {
            var update = engine.Compute(edits, null, direct);
            Assert.Contains("rebuilt (the saved one was corrupt", engine.GramStatus);
            Assert.True(Distance(update.Theta, first) <= 1e-12 * Distance(first, problem.Theta0));
        }
        using (var engine = Open("cache", TinyBudget, persist: true))
        {
            engine.Compute(edits, null, direct);
            Assert.StartsWith("loaded from", engine.GramStatus); // the rebuilt one was saved over it
        }

        // Stale: the cache's shards replaced by those of another problem with the same ids, shapes and dtype.
        var other = Woodbury(seed: 12);
        other.WriteCache(_temp.Sub("other"), "F16");
        foreach (var shard in Directory.EnumerateFiles(_temp.Sub("other"), "shard-*"))
            File.Copy(shard, Path.Combine(_temp.Sub("cache"), Path.GetFileName(shard)), overwrite: true);
        using (var engine = Open("cache", 1L << 30, persist: true))
        {
            var update = engine.Compute(edits, null, direct);
            Assert.Contains("rebuilt (the saved one was stale", engine.GramStatus);
            // Other rows, other system: the reported residual is still the true one for them.
            Assert.True(update.Report.RelativeResidual < 1e-10);
            Assert.False(Distance(update.Theta, first) <= 1e-6 * Distance(first, problem.Theta0));
        }
    }

    [Fact]
    public void No_tensors_leak_from_streamed_solves_and_the_ledger_returns_to_the_gram()
    {
        var problem = Woodbury(seed: 9);
        problem.WriteAdapter(_temp.Sub("adapter"));
        problem.WriteCache(_temp.Sub("cache"));
        var (edits, _, replacements) = Edits(problem, "F32");
        using var replacementSet = replacements;
        long baseline = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        var engine = Open("cache", TinyBudget, rowsPerChunk: 5);
        engine.Compute(EditSet.Empty.Remove([problem.Ids[0]]), null, new SolverOptions { Solver = SolverKind.Direct });
        engine.Compute(EditSet.Empty.Remove([problem.Ids[0]]), null, new SolverOptions { Solver = SolverKind.Cg });
        long warm = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        foreach (var kind in new[] { SolverKind.Direct, SolverKind.Cg, SolverKind.LlmEraser, SolverKind.Auto })
            engine.Compute(edits, _ => replacements,
                new SolverOptions { Solver = kind, LlmEraser = new LlmEraserOptions { Iterations = 20 }, RequireConvergence = kind != SolverKind.LlmEraser });
        Assert.Equal(warm, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        Assert.Equal(30 * 30 * 8, engine.BytesHeld);
        engine.Dispose();
        Assert.Equal(baseline, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
    }

    /// <summary>‖H'Δ − b‖/‖b‖ with H' and b built densely in float64 from the problem's own rows (SPEC §1).</summary>
    private static double DenseRelativeResidual(RidgeProblem problem, EditSet edits,
        IReadOnlyDictionary<string, (double[] X, double Y, double R)> corrections, double[] theta, double lambda)
    {
        int p = problem.P;
        var delta = Subtract(theta, problem.Theta0.Select(v => (double)(float)v).ToArray());
        var hv = delta.Select(v => lambda * v).ToArray();
        var b = new double[p];
        for (int i = 0; i < problem.Ids.Length; i++)
        {
            string id = problem.Ids[i];
            bool removed = edits.Removed.Contains(id), replaced = corrections.ContainsKey(id);
            var x = problem.X[i];
            if (!removed && !replaced)
            {
                double d = Dot(x, delta);
                for (int j = 0; j < p; j++)
                    hv[j] += d * x[j];
                continue;
            }
            var g = problem.Gradient(i);
            for (int j = 0; j < p; j++)
                b[j] += g[j];
            if (replaced)
            {
                var c = corrections[id];
                double d = Dot(c.X, delta);
                for (int j = 0; j < p; j++)
                {
                    hv[j] += d * c.X[j];
                    b[j] -= c.R * c.X[j];
                }
            }
        }
        return Distance(hv, b) / Norm(b);
    }
}
