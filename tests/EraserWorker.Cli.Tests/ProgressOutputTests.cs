using EraserWorker.Cli.Output;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using EraserWorker.Core.Tests.TestSupport;

namespace EraserWorker.Cli.Tests;

/// <summary>Progress on long work: at most one line a second, always the latest state, and for cg the iterations really
/// done (over every refinement round) with their residual.</summary>
public sealed class ProgressOutputTests : IDisposable
{
    private readonly TempFolder _temp = new();

    public void Dispose() => _temp.Dispose();

    /// <summary>A clock the test moves by hand.</summary>
    private sealed class ManualClock : TimeProvider
    {
        public long Ticks { get; set; }

        public override long TimestampFrequency => TimeSpan.TicksPerSecond;

        public override long GetTimestamp() => Ticks;

        public void Advance(TimeSpan by) => Ticks += by.Ticks;
    }

    [Fact]
    public void The_printer_writes_at_most_one_line_a_second_with_the_latest_state()
    {
        var clock = new ManualClock();
        var output = new StringWriter();
        var printer = new ProgressPrinter(output, clock);

        // 5 s of reports every 10 ms: iteration i at time i × 10 ms.
        for (int i = 1; i <= 500; i++)
        {
            printer.Report(new EngineProgress("cg", i, 2000, 1.0 / i));
            clock.Advance(TimeSpan.FromMilliseconds(10));
        }

        var lines = output.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.InRange(lines.Length, 4, 5);
        // Each line is the report that arrived when its second had passed: iterations 101, 201, … (t = 1.00 s, 2.00 s, …).
        for (int k = 0; k < lines.Length; k++)
        {
            Assert.Contains($"iteration {100 * (k + 1) + 1:N0} (cap 2,000)", lines[k]);
            Assert.Contains($"relative residual {1.0 / (100 * (k + 1) + 1):E2}", lines[k]);
        }
    }

    [Fact]
    public void Work_that_finishes_within_a_second_prints_nothing()
    {
        var clock = new ManualClock();
        var output = new StringWriter();
        var printer = new ProgressPrinter(output, clock);
        foreach (var stage in new[] { "load", "gram", "cg" })
            for (int i = 0; i <= 10; i++)
            {
                printer.Report(new EngineProgress(stage, i, 10));
                clock.Advance(TimeSpan.FromMilliseconds(20));
            }
        Assert.Equal("", output.ToString());
    }

    [Fact]
    public void Cg_reports_every_iteration_it_does_across_refinement_rounds()
    {
        var problem = new RidgeProblem(samples: 60, rank: 4, inFeatures: 12, outFeatures: 8, seed: 3, l2: 1.0 / 1024);
        problem.WriteAdapter(_temp.Sub("adapter"));
        problem.WriteCache(_temp.Sub("cache"));
        using var engine = InfluenceEngine.Load(PeftAdapter.Open(_temp.Sub("adapter")), GradientCache.Open(_temp.Sub("cache")),
            new ComputeOptions { Device = "cpu" });
        var seen = new List<EngineProgress>();
        var update = engine.Compute(EditSet.Empty.Remove(problem.Ids.Take(2)), null, new SolverOptions { Solver = SolverKind.Cg },
            new SynchronousProgress(seen.Add));

        var cg = seen.Where(p => p.Stage == "cg").ToList();
        Assert.Equal(Enumerable.Range(1, update.Report.Iterations).Select(i => (long)i), cg.Select(p => p.Done));
        Assert.All(cg, p => Assert.Equal(2000, p.Total));
        Assert.All(cg, p => Assert.True(p.Residual is > 0 && double.IsFinite(p.Residual.Value), $"residual {p.Residual}"));
        Assert.True(cg[^1].Residual < cg[0].Residual, "the reported residual falls");
    }

    /// <summary><see cref="Progress{T}"/> posts to the thread pool; this reports on the caller's thread, in order.</summary>
    private sealed class SynchronousProgress(Action<EngineProgress> report) : IProgress<EngineProgress>
    {
        public void Report(EngineProgress value) => report(value);
    }
}
