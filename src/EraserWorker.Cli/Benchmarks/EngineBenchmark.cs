using System.Diagnostics;
using System.Text.Json;
using EraserWorker.Cli.Output;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.Adapters;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Influence;
using TorchSharp;

namespace EraserWorker.Cli.Benchmarks;

/// <summary>
/// Side-by-side figures for the compute core on one synthetic cache: one streaming pass, warm solves,
/// peak memory, and cold end-to-end runs of <c>eraser unlearn</c> and of a numpy + OpenBLAS baseline.
/// </summary>
public static class EngineBenchmark
{
    public sealed record Settings(int Samples, int Parameters, string DType, bool Curvature, string Directory,
        int[] Batches, string[] Solvers, string? NumpyScript, string Python, int ColdRuns = 3);

    /// <param name="PeakMemoryBytes">The process's peak resident memory after this solve (solvers run in the order given).</param>
    public sealed record SolveFigure(string Solver, string Method, int Batch, double Seconds, int Iterations, double RelativeResidual,
        long PeakMemoryBytes);

    public sealed record ColdFigure(string Name, double Seconds, long? PeakMemoryBytes, string? Note);

    public sealed record Report(
        int Samples, int Parameters, string DType, bool Curvature, long CacheBytes, int Threads,
        double GenerateSeconds, double StreamingPassSeconds, double LoadSeconds, double GramSeconds,
        IReadOnlyList<SolveFigure> WarmSolves, long PeakMemoryBytes, IReadOnlyList<ColdFigure> Cold,
        double? MaxRelativeDifferenceToNumpy);

    public static async Task<Report> RunAsync(Settings s, TextWriter log, CancellationToken cancellation)
    {
        string adapterDir = Path.Combine(s.Directory, "adapter"), cacheDir = Path.Combine(s.Directory, "cache");
        double generateSeconds = 0;
        if (!Matches(cacheDir, s))
        {
            if (System.IO.Directory.Exists(s.Directory))
                System.IO.Directory.Delete(s.Directory, recursive: true);
            log.WriteLine($"generating n = {s.Samples:N0}, P = {s.Parameters:N0}, {s.DType}{(s.Curvature ? " with curvature rows" : "")} in {s.Directory} …");
            var watch = Stopwatch.StartNew();
            SyntheticCache.Write(adapterDir, cacheDir, s.Samples, SyntheticCache.Layout(null, s.Parameters), s.DType, s.Curvature, log);
            generateSeconds = watch.Elapsed.TotalSeconds;
        }
        long cacheBytes = new DirectoryInfo(cacheDir).EnumerateFiles().Sum(f => f.Length);
        log.WriteLine($"cache: {cacheBytes / 1e9:F2} GB on disk");

        // Both cold runs find the cache files in the page cache (read once here with a small buffer), as the
        // second of two runs would; otherwise the first one would pay for the disk.
        foreach (var file in new DirectoryInfo(cacheDir).EnumerateFiles())
        {
            using var stream = file.OpenRead();
            var buffer = new byte[1 << 20];
            while (stream.Read(buffer) > 0)
            {
            }
        }

        // Cold runs first: each child process finds the machine as a user's fresh command would, not beside a
        // warm benchmark process holding its memory and threads.
        IReadOnlyList<string> ids;
        IReadOnlyList<ParameterSpec> parameters;
        using (var cache = GradientCache.Open(cacheDir))
            (ids, parameters) = (cache.Ids, cache.Parameters);
        var cold = new List<ColdFigure>();
        var removeFile = Path.Combine(s.Directory, "remove.txt");
        await File.WriteAllLinesAsync(removeFile, ids.Take(8), cancellation);
        var ours = Path.Combine(s.Directory, "out-eraser");
        var theirs = Path.Combine(s.Directory, "out-numpy");
        // Alternating pairs, median reported: on a shared machine single runs vary by tens of percent.
        var eraserRuns = new List<(double Seconds, long Peak, string Note)>();
        var numpyRuns = new List<(double Seconds, long Peak, string Note)>();
        // `eraser unlearn` keeps the Gram it builds beside the cache; every cold run must build its own.
        string derived = Path.Combine(cacheDir, "derived");
        for (int run = 0; run < s.ColdRuns; run++)
        {
            DeleteIfExists(ours);
            DeleteIfExists(derived);
            var (eraserSeconds, eraserOutput) = await RunChildAsync(EraserCommand(
                ["unlearn", "--adapter", adapterDir, "--cache", cacheDir, "--remove-file", removeFile, "--out", ours, "--json"]), cancellation);
            using (var doc = JsonDocument.Parse(eraserOutput))
                eraserRuns.Add((eraserSeconds, doc.RootElement.GetProperty("peakMemoryBytes").GetInt64(),
                    $"{doc.RootElement.GetProperty("solver").GetString()}, residual {doc.RootElement.GetProperty("relativeResidual").GetDouble():E1}"));
            log.WriteLine($"cold eraser unlearn: {eraserSeconds:F2} s");
            if (s.NumpyScript is null)
                continue;
            DeleteIfExists(theirs);
            var (numpySeconds, numpyOutput) = await RunChildAsync(
                (s.Python, [s.NumpyScript, "--adapter", adapterDir, "--cache", cacheDir, "--remove-file", removeFile, "--out", theirs]), cancellation);
            using (var doc = JsonDocument.Parse(numpyOutput))
                numpyRuns.Add((numpySeconds, doc.RootElement.GetProperty("peakMemoryBytes").GetInt64(), doc.RootElement.GetProperty("blas").GetString()!));
            log.WriteLine($"cold numpy baseline: {numpySeconds:F2} s");
        }
        cold.Add(Median("eraser unlearn (8 removals)", eraserRuns));
        double? difference = null;
        if (numpyRuns.Count > 0)
        {
            cold.Add(Median("numpy + OpenBLAS (8 removals)", numpyRuns));
            difference = RelativeDifference(adapterDir, parameters, ours, theirs);
        }
        var watchLoad = Stopwatch.StartNew();
        DeleteIfExists(derived);
        using var engine = InfluenceEngine.Load(PeftAdapter.Open(adapterDir), GradientCache.Open(cacheDir),
            new ComputeOptions { Device = "auto", PersistGram = false });
        double load = watchLoad.Elapsed.TotalSeconds;
        var watchGram = Stopwatch.StartNew();
        engine.Warm(null, cancellation);
        double gram = watchGram.Elapsed.TotalSeconds;
        log.WriteLine($"warm-up: load {load:F2} s, Gram {gram:F2} s on {engine.DeviceName}");

        var figures = new List<SolveFigure>();
        foreach (var solver in s.Solvers)
            foreach (var batch in s.Batches)
            {
                var edits = EditSet.Empty.Remove(ids.Take(batch));
                var update = engine.Compute(edits, null, new SolverOptions { Solver = SolverOptions.ParseKind(solver) }, null, cancellation);
                figures.Add(new SolveFigure(solver, update.Report.Method, batch, update.Report.Seconds, update.Report.Iterations,
                    update.Report.RelativeResidual, ProcessMemory.PeakBytes()));
                log.WriteLine($"warm {solver,-9} batch {batch,3}: {update.Report.Seconds:F3} s, {update.Report.Iterations} it, residual {update.Report.RelativeResidual:E1}");
            }
        long peak = ProcessMemory.PeakBytes();

        // Last, so that its read buffers do not count in the solvers' peak memory figures.
        double streaming = StreamingPass(cacheDir);
        log.WriteLine($"one streaming pass: {streaming:F2} s ({cacheBytes / 1e9 / streaming:F2} GB/s)");

        return new Report(s.Samples, s.Parameters, s.DType, s.Curvature, cacheBytes, torch.get_num_threads(), generateSeconds,
            streaming, load, gram, figures, peak, cold, difference);
    }

    public static void Print(Report r, TextWriter o)
    {
        o.WriteLine($"Synthetic cache: n = {r.Samples:N0}, P = {r.Parameters:N0}, {r.DType}, curvature rows: {r.Curvature}, {r.CacheBytes / 1e9:F2} GB; {r.Threads} threads");
        o.WriteLine($"One streaming pass over the cache: {r.StreamingPassSeconds:F2} s ({r.CacheBytes / 1e9 / r.StreamingPassSeconds:F2} GB/s)");
        o.WriteLine($"Warm-up (once per adapter): load {r.LoadSeconds:F2} s, Gram {r.GramSeconds:F2} s");
        o.WriteLine();
        o.WriteLine("Warm solve                     batch   seconds   × pass   iterations   residual   peak so far (× cache)");
        foreach (var f in r.WarmSolves)
            o.WriteLine($"  {f.Solver,-9} {f.Method,-18} {f.Batch,3} {f.Seconds,9:F3} {f.Seconds / r.StreamingPassSeconds,8:F2} {f.Iterations,12} {f.RelativeResidual,10:E1}   {f.PeakMemoryBytes / 1e9,5:F2} GB ({(double)f.PeakMemoryBytes / r.CacheBytes:F2})");
        o.WriteLine();
        o.WriteLine($"Peak memory (warm process): {r.PeakMemoryBytes / 1e9:F2} GB = {(double)r.PeakMemoryBytes / r.CacheBytes:F2} × cache size on disk");
        o.WriteLine();
        o.WriteLine("Cold end to end (new process, same machine, one after the other)");
        foreach (var c in r.Cold)
            o.WriteLine($"  {c.Name,-32} {c.Seconds,8:F2} s   peak {(c.PeakMemoryBytes ?? 0) / 1e9,5:F2} GB   {c.Note}");
        if (r.Cold.Count == 2)
            o.WriteLine($"  speed-up over numpy: {r.Cold[1].Seconds / r.Cold[0].Seconds:F2}×");
        if (r.MaxRelativeDifferenceToNumpy is { } d)
            o.WriteLine($"  ‖θ'_eraser − θ'_numpy‖ / ‖θ'_numpy − θ₀‖ = {d:E2}");
    }

    private static ColdFigure Median(string name, List<(double Seconds, long Peak, string Note)> runs)
    {
        var sorted = runs.OrderBy(r => r.Seconds).ToList();
        var median = sorted[sorted.Count / 2];
        return new ColdFigure($"{name}, median of {runs.Count}", median.Seconds, sorted.Max(r => r.Peak),
            $"{median.Note}; runs {string.Join(" / ", runs.Select(r => r.Seconds.ToString("F1")))} s");
    }

    private static bool Matches(string cacheDir, Settings s)
    {
        try
        {
            using var cache = GradientCache.Open(cacheDir);
            return cache.RowCount == s.Samples && cache.ParameterCount == s.Parameters && cache.StorageDType == s.DType && cache.HasCurvature == s.Curvature;
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException)
        {
            return false;
        }
    }

    private static double StreamingPass(string cacheDir)
    {
        using var cache = GradientCache.Open(cacheDir);
        var watch = Stopwatch.StartNew();
        int rowsPerChunk = (int)Math.Max(1, (32L << 20) / cache.ParameterCount);
        var chunks = cache.Chunks(rowsPerChunk).ToList();
        var matrices = cache.HasCurvature ? new[] { CacheMatrix.Gradients, CacheMatrix.Curvature } : [CacheMatrix.Gradients];
        var work = chunks.SelectMany(c => matrices.Select(m => (c.FirstRow, c.RowCount, Matrix: m))).ToArray();
        int next = -1;
        // Two readers with one buffer each (Parallel.ForEach's per-task buffers would inflate the peak memory figure).
        var readers = Enumerable.Range(0, 2).Select(_ => Task.Run(() =>
        {
            var buffer = new float[rowsPerChunk * cache.ParameterCount];
            for (int i = Interlocked.Increment(ref next); i < work.Length; i = Interlocked.Increment(ref next))
                cache.ReadRows(work[i].Matrix, work[i].FirstRow, work[i].RowCount, buffer.AsSpan(0, (int)(work[i].RowCount * cache.ParameterCount)));
        })).ToArray();
        Task.WhenAll(readers).GetAwaiter().GetResult();
        return watch.Elapsed.TotalSeconds;
    }

    private static double RelativeDifference(string baseAdapter, IReadOnlyList<ParameterSpec> parameters, string ours, string theirs)
    {
        var theta0 = PeftAdapter.Open(baseAdapter).ReadParameters(parameters);
        var a = PeftAdapter.Open(ours).ReadParameters(parameters);
        var b = PeftAdapter.Open(theirs).ReadParameters(parameters);
        double diff = 0, shift = 0;
        for (int i = 0; i < a.Length; i++)
        {
            diff += (a[i] - b[i]) * (a[i] - b[i]);
            shift += (b[i] - theta0[i]) * (b[i] - theta0[i]);
        }
        return Math.Sqrt(diff / shift);
    }

    private static (string File, string[] Args) EraserCommand(string[] args)
    {
        var host = Environment.ProcessPath ?? "dotnet";
        return Path.GetFileNameWithoutExtension(host) == "dotnet"
            ? (host, [typeof(EngineBenchmark).Assembly.Location, .. args])
            : (host, args);
    }

    private static async Task<(double Seconds, string Output)> RunChildAsync((string File, string[] Args) command, CancellationToken cancellation)
    {
        var start = new ProcessStartInfo(command.File) { RedirectStandardOutput = true, RedirectStandardError = true };
        // Some hosts pin OpenBLAS to an older kernel for safety; the baseline gets the library's own choice,
        // as a user's numpy would (both variables are dropped together, for this child only).
        start.Environment.Remove("OPENBLAS_CORETYPE");
        start.Environment.Remove("OPENBLAS_L2_SIZE");
        foreach (var a in command.Args)
            start.ArgumentList.Add(a);
        var watch = Stopwatch.StartNew();
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync(cancellation);
        var stderr = process.StandardError.ReadToEndAsync(cancellation);
        await process.WaitForExitAsync(cancellation);
        double seconds = watch.Elapsed.TotalSeconds;
        if (process.ExitCode != 0)
            throw new InvalidOperationException($"'{command.File} {string.Join(' ', command.Args)}' failed ({process.ExitCode}): {await stderr}");
        return (seconds, await stdout);
    }

    private static void DeleteIfExists(string directory)
    {
        if (System.IO.Directory.Exists(directory))
            System.IO.Directory.Delete(directory, recursive: true);
    }
}
