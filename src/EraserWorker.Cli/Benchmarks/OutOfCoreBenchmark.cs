using System.Diagnostics;
using EraserWorker.Cli.Output;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;

namespace EraserWorker.Cli.Benchmarks;

/// <summary>
/// The exact path on a cache larger than the memory budget, measured side by side in one process: one streaming
/// pass over the curvature rows from disk (the reads a solve makes, no compute), the cold first solve (which builds
/// the float64 Gram from streamed panels and saves it beside the cache), warm solves, the first solve of a restarted
/// engine (which loads the saved Gram and checks it against the rows), a second streaming pass, and the peak
/// resident memory of all that against the budget. Before each measured step the cache files are evicted from the
/// page cache, so every step reads from the disk.
/// </summary>
public static class OutOfCoreBenchmark
{
    public sealed record Settings(int Samples, string? Shape, int Parameters, string DType, bool Curvature, string Directory,
        long BudgetBytes, RowResidency Residency, int[] Batches, bool DeleteData);

    public sealed record Step(string Name, double Seconds, int Passes, double? GramSeconds, double? RelativeResidual, string? Note);

    public sealed record Report(
        int Samples, int Parameters, string DType, bool Curvature, long CurvatureBytes, long CacheBytes, long BudgetBytes,
        string Residency, string Reason, bool PageCacheEvicted, double StreamingPassSeconds, double SecondStreamingPassSeconds,
        IReadOnlyList<Step> Steps, long PeakRssBytes, bool PeakReset, string Load);

    public static Report Run(Settings s, TextWriter log, CancellationToken cancellation)
    {
        string adapterDir = Path.Combine(s.Directory, "adapter"), cacheDir = Path.Combine(s.Directory, "cache");
        var specs = SyntheticCache.Layout(s.Shape, s.Parameters);
        int p = checked((int)ParameterSpec.TotalCount(specs));
        if (!Matches(cacheDir, s.Samples, p, s.DType, s.Curvature))
        {
            if (System.IO.Directory.Exists(s.Directory))
                System.IO.Directory.Delete(s.Directory, recursive: true);
            log.WriteLine($"generating n = {s.Samples:N0}, P = {p:N0}, {s.DType}{(s.Curvature ? " with curvature rows" : "")} in {s.Directory} …");
            SyntheticCache.Write(adapterDir, cacheDir, s.Samples, specs, s.DType, s.Curvature, log);
        }
        var files = new DirectoryInfo(cacheDir).EnumerateFiles("*.safetensors").Select(f => f.FullName).ToList();
        long cacheBytes = files.Sum(f => new FileInfo(f).Length);
        string gramFile = Path.Combine(cacheDir, "derived", "gram.safetensors");
        if (File.Exists(gramFile))
            File.Delete(gramFile); // the cold solve must build it

        bool reset = ProcessMemory.ResetPeak();
        bool evicted = PageCache.Evict(files);
        double pass1 = StreamingPass(cacheDir, out long curvatureBytes);
        log.WriteLine($"streaming pass over the curvature rows ({curvatureBytes / 1e9:F1} GB) from disk: {pass1:F1} s ({curvatureBytes / 1e9 / pass1:F2} GB/s)");

        var compute = new ComputeOptions { Device = "auto", MemoryBudgetBytes = s.BudgetBytes, Residency = s.Residency };
        var ids = OpenIds(cacheDir);
        var steps = new List<Step>();
        InfluenceEngine engine;
        PageCache.Evict(files);
        var loadWatch = Stopwatch.StartNew();
        engine = InfluenceEngine.Load(PeftAdapter.Open(adapterDir), GradientCache.Open(cacheDir), compute, null, cancellation);
        string load = $"{loadWatch.Elapsed.TotalSeconds:F1} s";
        var plan = engine.RowPlan;
        log.WriteLine($"rows: {engine.RowPlan.Residency}, {engine.RowPlan.HoldDType} ({engine.RowPlan.Reason}); load {load}");
        try
        {
            steps.Add(Solve(engine, "cold first solve (builds and saves the Gram)", ids.Take(8), log, cancellation));
            foreach (int batch in s.Batches)
            {
                PageCache.Evict(files);
                steps.Add(Solve(engine, $"warm solve, {batch} removal(s)", ids.Skip(8).Take(batch), log, cancellation));
            }
        }
        finally
        {
            engine.Dispose();
        }

        // A restarted worker: a new engine finds the saved Gram, checks it against the rows' digest and solves.
        PageCache.Evict(files.Append(gramFile).Where(File.Exists));
        using (var restarted = InfluenceEngine.Load(PeftAdapter.Open(adapterDir), GradientCache.Open(cacheDir), compute, null, cancellation))
            steps.Add(Solve(restarted, "restarted engine, first solve (loads the Gram)", ids.Take(8), log, cancellation));

        PageCache.Evict(files);
        double pass2 = StreamingPass(cacheDir, out _);
        log.WriteLine($"second streaming pass: {pass2:F1} s");
        long peak = ProcessMemory.PeakBytes();
        var report = new Report(s.Samples, p, s.DType, s.Curvature, curvatureBytes, cacheBytes, s.BudgetBytes,
            plan.Residency.ToString().ToLowerInvariant(), plan.Reason, evicted, pass1, pass2, steps, peak, reset, load);
        if (s.DeleteData)
        {
            System.IO.Directory.Delete(s.Directory, recursive: true);
            log.WriteLine($"deleted {s.Directory}");
        }
        return report;
    }

    private static Step Solve(InfluenceEngine engine, string name, IEnumerable<string> remove, TextWriter log, CancellationToken cancellation)
    {
        var gram = new GramTimer();
        var watch = Stopwatch.StartNew();
        var update = engine.Compute(EditSet.Empty.Remove(remove), null, new SolverOptions { Solver = SolverKind.Direct }, gram, cancellation);
        double seconds = watch.Elapsed.TotalSeconds;
        var rows = update.Report.Rows!;
        log.WriteLine($"{name}: {seconds:F1} s, {rows.Passes} passes, {(gram.Seconds is { } g ? $"Gram {g:F1} s, " : "")}residual {update.Report.RelativeResidual:E1}, {rows.Gram}");
        return new Step(name, seconds, rows.Passes, gram.Seconds, update.Report.RelativeResidual,
            $"{rows.Residency} {rows.DType}; {update.Report.Method}; {rows.BytesRead / 1e9:F1} GB read; held {rows.HeldBytes / 1e6:F0} MB, ledger peak {rows.PeakBytes / 1e6:F0} MB; Gram {rows.Gram}");
    }

    /// <summary>Times the Gram build from its first progress report (at column 0) to its last.</summary>
    private sealed class GramTimer : IProgress<EngineProgress>
    {
        private readonly Stopwatch _watch = Stopwatch.StartNew();
        private double? _start, _end;

        public double? Seconds => _start is { } s && _end is { } e ? e - s : null;

        public void Report(EngineProgress value)
        {
            if (value.Stage != "gram")
                return;
            _start ??= _watch.Elapsed.TotalSeconds;
            _end = _watch.Elapsed.TotalSeconds;
        }
    }

    public static void Print(Report r, TextWriter o)
    {
        o.WriteLine($"Synthetic cache: n = {r.Samples:N0}, P = {r.Parameters:N0}, {r.DType}, curvature rows: {r.Curvature}; {r.CacheBytes / 1e9:F1} GB on disk, curvature rows {r.CurvatureBytes / 1e9:F1} GB");
        o.WriteLine($"Memory budget {r.BudgetBytes / (double)(1L << 30):F2} GiB; rows {r.Residency}: {r.Reason}");
        o.WriteLine($"Page cache evicted before each step: {r.PageCacheEvicted}; engine load {r.Load}");
        o.WriteLine($"One streaming pass over the curvature rows from disk: {r.StreamingPassSeconds:F1} s (again at the end: {r.SecondStreamingPassSeconds:F1} s)");
        double pass = (r.StreamingPassSeconds + r.SecondStreamingPassSeconds) / 2;
        o.WriteLine();
        o.WriteLine("step                                              seconds   × pass   passes   Gram s   residual");
        foreach (var step in r.Steps)
            o.WriteLine($"  {step.Name,-46} {step.Seconds,8:F1} {step.Seconds / pass,8:F2} {step.Passes,8} {(step.GramSeconds is { } g ? g.ToString("F1") : "-"),8} {step.RelativeResidual,10:E1}");
        o.WriteLine();
        foreach (var step in r.Steps)
            o.WriteLine($"  {step.Name}: {step.Note}");
        if (r.Steps.FirstOrDefault()?.GramSeconds is { } gram)
            o.WriteLine($"Cold first solve = Gram build {gram:F1} s + {(r.Steps[0].Seconds - gram) / pass:F2} passes");
        o.WriteLine($"Peak RSS {(r.PeakReset ? "of the measured steps" : "of the process")}: {r.PeakRssBytes / 1e9:F2} GB against a budget of {r.BudgetBytes / 1e9:F2} GB ({(r.PeakRssBytes - r.BudgetBytes) / 1e9:+0.00;−0.00} GB)");
    }

    /// <summary>Reads every curvature row once (gradients when there are none) with the I/O pattern of a streamed pass:
    /// 64 MB blocks, a few positioned reads in flight, no compute.</summary>
    private static double StreamingPass(string cacheDir, out long bytes)
    {
        using var cache = GradientCache.Open(cacheDir);
        int rows = (int)Math.Max(1, (64L << 20) / cache.RowBytes);
        var blocks = cache.Chunks(rows).ToArray();
        bytes = cache.RowCount * cache.RowBytes;
        var watch = Stopwatch.StartNew();
        int next = -1;
        var readers = Enumerable.Range(0, 4).Select(_ => Task.Run(() =>
        {
            var buffer = new byte[rows * cache.RowBytes];
            for (int i = Interlocked.Increment(ref next); i < blocks.Length; i = Interlocked.Increment(ref next))
                cache.ReadRowsRaw(CacheMatrix.Curvature, blocks[i].FirstRow, blocks[i].RowCount, buffer);
        })).ToArray();
        Task.WhenAll(readers).GetAwaiter().GetResult();
        return watch.Elapsed.TotalSeconds;
    }

    private static IReadOnlyList<string> OpenIds(string cacheDir)
    {
        using var cache = GradientCache.Open(cacheDir);
        return cache.Ids.ToArray();
    }

    private static bool Matches(string cacheDir, int n, int p, string dtype, bool curvature)
    {
        try
        {
            using var cache = GradientCache.Open(cacheDir);
            return cache.RowCount == n && cache.ParameterCount == p && cache.StorageDType == dtype && cache.HasCurvature == curvature;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            return false;
        }
    }
}
