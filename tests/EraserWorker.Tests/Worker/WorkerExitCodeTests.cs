using EraserWorker.Demo;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Worker;

/// <summary>
/// The worker process as containers and systemd see it: exit code 0 after a requested stop (SIGTERM), non-zero when it
/// cannot start or a background service fails; and the README's first command, <c>--demo</c> on the embedded defaults,
/// run again and again, continues one version chain.
/// </summary>
public sealed class WorkerExitCodeTests(ITestOutputHelper output) : IDisposable
{
    private readonly TempDirectory _temp = new("eraser-exit-codes");

    public void Dispose() => _temp.Dispose();

    /// <summary>The embedded defaults (in-memory transport, folder store) with the store and work folders in the test's
    /// temporary folder.</summary>
    private Dictionary<string, string> Environment(Dictionary<string, string>? extra = null)
    {
        var environment = new Dictionary<string, string>
        {
            ["Eraser__Storage__Root"] = Path.Combine(_temp.Path, "store"),
            ["Eraser__Worker__WorkDirectory"] = Path.Combine(_temp.Path, "work"),
            ["Eraser__Compute__Device"] = "cpu",
        };
        foreach (var (k, v) in extra ?? [])
            environment[k] = v;
        return environment;
    }

    private AdapterStore Store() => new(new FileSystemBlobStore(Path.Combine(_temp.Path, "store")));

    [Fact]
    public async Task Consecutive_demo_runs_continue_one_version_chain_and_stop_with_exit_code_zero()
    {
        string adapterId = new DemoOptions().AdapterId;
        var heads = new List<int>();
        for (int run = 1; run <= 3; run++)
        {
            await using var worker = WorkerProcess.Start($"demo-run-{run}", Environment(new()
            {
                ["Eraser__Demo__Requests"] = "3",
                ["Eraser__Demo__Interval"] = "00:00:00.300",
            }), output, ["--demo"]);
            await worker.WaitReadyAsync();
            var watch = System.Diagnostics.Stopwatch.StartNew();
            // The worker batches: the three requests may share versions. Wait for the three completions.
            while (Count(worker.Output, " completed in version ") < 3)
            {
                Assert.False(worker.HasExited, $"run {run} exited early.\n{worker.Tail()}");
                Assert.True(watch.Elapsed < TimeSpan.FromSeconds(90), $"run {run}: its 3 requests did not complete.\n{worker.Tail()}");
                await Task.Delay(200);
            }
            Assert.Equal(0, await worker.StopAsync());
            Assert.DoesNotContain("Exception", worker.Output);
            Assert.DoesNotContain("fail:", worker.Output);
            heads.Add((await Store().GetHeadAsync(adapterId))!.Version);
        }

        // Each run added versions on top of the last; together they form one chain 0 → 1 → … → head.
        Assert.True(heads[0] >= 1 && heads[1] > heads[0] && heads[2] > heads[1], $"heads after each run: {string.Join(", ", heads)}");
        var store = Store();
        Assert.Equal(Enumerable.Range(0, heads[2] + 1), await store.ListVersionsAsync(adapterId));
        var applied = new HashSet<string>(StringComparer.Ordinal);
        for (int v = 1; v <= heads[2]; v++)
        {
            var manifest = await store.ReadManifestAsync(adapterId, v) ?? throw new Xunit.Sdk.XunitException($"no manifest for version {v}");
            Assert.Equal(v - 1, manifest.ParentVersion);
            foreach (var request in manifest.Requests)
                Assert.True(applied.Add(request.RequestId), $"request {request.RequestId} applied twice");
        }
        Assert.Equal(9, applied.Count);
    }

    private static int Count(string text, string what)
    {
        int count = 0;
        for (int at = text.IndexOf(what, StringComparison.Ordinal); at >= 0; at = text.IndexOf(what, at + what.Length, StringComparison.Ordinal))
            count++;
        return count;
    }

    [Fact]
    public async Task A_worker_with_invalid_settings_exits_non_zero_with_one_line_naming_every_bad_key()
    {
        await using var worker = WorkerProcess.Start("bad-settings", Environment(new() { ["Eraser__Worker__MaxIterations"] = "0" }), output);
        int exit = await worker.WaitForExitAsync();

        Assert.Equal(1, exit);
        Assert.Contains("EraserWorker: cannot start: invalid configuration: Eraser:Worker:MaxIterations must be at least 1 (got 0).", worker.Output);
    }

    [Fact]
    public async Task A_background_service_that_fails_stops_the_worker_with_a_non_zero_exit_code()
    {
        // The demo publisher throws at once on an adapter id the store refuses.
        await using var worker = WorkerProcess.Start("failing-service", Environment(new() { ["Eraser__Demo__AdapterId"] = "Not A Valid Id" }),
            output, ["--demo"]);
        int exit = await worker.WaitForExitAsync(TimeSpan.FromSeconds(60));

        Assert.Equal(1, exit);
        Assert.Contains("EraserWorker: stopped because DemoPublisher failed: Invalid adapter id 'Not A Valid Id'", worker.Output);
    }
}
