using System.Diagnostics;
using System.Net;
using EraserWorker.Contracts;
using EraserWorker.Tests.Infrastructure;
using EraserWorker.Tests.Worker;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Reliability;

/// <summary>
/// The shared RabbitMQ restarted, and the shared Azurite stopped for 30 s, in the middle of a run
/// (<c>scripts/services.sh restart rabbitmq</c>, <c>stop azurite</c> … <c>start azurite</c>). The worker retries with
/// backoff (MassTransit message retry; the Azure SDK's own retries), <c>/health/ready</c> goes false while a dependency is
/// down and comes back, and nothing is lost: every request completes exactly once and the adapter equals retraining.
/// These tests stop services other tests use: they run alone (<see cref="DisruptiveCollection"/>) and restart the
/// service in a finally block whatever happens.
/// </summary>
[Collection(DisruptiveCollection.Name)]
public sealed class ServiceOutageTests(ITestOutputHelper output)
{
    [ServiceFact]
    public async Task RabbitMq_restarted_mid_run_readiness_drops_and_returns_and_nothing_is_lost()
    {
        await ServiceControl.RequireControllableAsync("rabbitmq");
        var settings = FaultSettings.FromEnvironment(requests: 40, kills: 0);
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(samples: settings.Requests + 5, seed: 41);
        await bed.RegisterAsync(ridge);
        // A 3 s batch window: the first half is still being collected (delivered, not acknowledged) when the broker stops.
        var worker = await bed.StartWorkerAsync("worker", batchTimeLimit: TimeSpan.FromSeconds(3));
        var events = await DurableEvents.CreateAsync(bed.VirtualHost);
        var requests = Requests(ridge, "rmq", settings.Requests);
        var ids = requests.Select(r => r.RequestId).ToList();

        // The first half is in the queue and in the worker's hands when the broker goes down.
        var before = await bed.ConnectBrokerAsync();
        foreach (var r in requests.Take(requests.Count / 2))
            await before.PublishAsync(r);
        await Task.Delay(300);
        await events.DrainAsync();
        bed.Log($"restarting RabbitMQ; {events.Completed.Count} completions so far");

        await using var probe = ReadinessProbe.Start(worker);
        var outage = Stopwatch.StartNew();
        try
        {
            await ServiceControl.RunOrFailAsync("restart", "rabbitmq");
        }
        finally
        {
            await ServiceControl.RunAsync(TimeSpan.FromSeconds(180), "start", "rabbitmq");
        }
        bed.Log($"RabbitMQ back after {outage.Elapsed.TotalSeconds:F1} s");
        await worker.WaitReadyAsync(TimeSpan.FromSeconds(120));
        bed.Log($"worker ready again {outage.Elapsed.TotalSeconds:F1} s after the restart began; readiness: {probe.Describe()}");

        var after = await bed.ConnectBrokerAsync();
        foreach (var r in requests.Skip(requests.Count / 2))
            await after.PublishAsync(r);
        await events.WaitAnsweredAsync(ids, TimeSpan.FromSeconds(180), bed.Diagnostics);
        await Task.Delay(1000);
        await events.DrainAsync();

        Assert.True(probe.SawNotReady, $"/health/ready never went false while RabbitMQ was down: {probe.Describe()}");
        Assert.True(await probe.WaitRecoveryAsync(TimeSpan.FromSeconds(10)), $"/health/ready did not come back: {probe.Describe()}");
        Assert.Equal(HttpStatusCode.OK, await worker.ReadyStatusAsync());
        Assert.True(events.Failed.Count == 0, "failures: " + string.Join("; ", events.Failed.Select(f => $"{f.RequestId} {f.Code}: {f.Message}")));
        await AssertNothingLostAsync(bed, ridge, requests, events.Completed);
    }

    [ServiceFact]
    public async Task Azurite_stopped_for_30_seconds_mid_run_retries_readiness_drops_and_returns_and_nothing_is_lost()
    {
        await ServiceControl.RequireControllableAsync("azurite");
        var settings = FaultSettings.FromEnvironment(requests: 30, kills: 0);
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(samples: settings.Requests + 5, seed: 42);
        await bed.RegisterAsync(ridge);
        var worker = await bed.StartWorkerAsync("worker");
        var broker = await bed.ConnectBrokerAsync();
        var requests = Requests(ridge, "blob", settings.Requests);
        var ids = requests.Select(r => r.RequestId).ToList();
        int third = requests.Count / 3;

        foreach (var r in requests.Take(third))
            await broker.PublishAsync(r);
        await Task.Delay(500); // some are being applied when the store goes away

        await using var probe = ReadinessProbe.Start(worker);
        var outage = Stopwatch.StartNew();
        try
        {
            await ServiceControl.RunOrFailAsync("stop", "azurite");
            bed.Log($"Azurite stopped; {broker.Completed.Count} completions so far");
            // Requests keep arriving during the outage.
            foreach (var r in requests.Skip(third).Take(third))
            {
                await broker.PublishAsync(r);
                await Task.Delay(200);
            }
            var left = settings.Outage - outage.Elapsed;
            if (left > TimeSpan.Zero)
                await Task.Delay(left);
        }
        finally
        {
            await ServiceControl.RunAsync(TimeSpan.FromSeconds(180), "start", "azurite");
        }
        bed.Log($"Azurite started again after {outage.Elapsed.TotalSeconds:F1} s; {broker.Completed.Count} completions so far");
        await worker.WaitReadyAsync(TimeSpan.FromSeconds(120));
        bed.Log($"worker ready again; readiness: {probe.Describe()}");

        foreach (var r in requests.Skip(2 * third))
            await broker.PublishAsync(r);
        await broker.WaitCompletedAsync(ids, TimeSpan.FromSeconds(240), bed.Diagnostics);
        await broker.CollectForAsync(TimeSpan.FromSeconds(1));

        Assert.True(probe.SawNotReady, $"/health/ready never went false while Azurite was down: {probe.Describe()}");
        Assert.True(await probe.WaitRecoveryAsync(TimeSpan.FromSeconds(10)), $"/health/ready did not come back: {probe.Describe()}");
        bed.Log($"readiness: {probe.Describe()}");
        Assert.True(broker.Failed.Count == 0, "failures: " + string.Join("; ", broker.Failed.Select(f => $"{f.RequestId} {f.Code}: {f.Message}")));
        await AssertNothingLostAsync(bed, ridge, requests, broker.Completed);
        Assert.Equal(0u, await bed.VirtualHost.MessageCountAsync("eraser-unlearning-requested_error") ?? 0);
    }

    private static List<UnlearningRequested> Requests(RidgeOracle ridge, string prefix, int count) =>
        Enumerable.Range(0, count)
            .Select(i => new UnlearningRequested($"{prefix}-{i:D3}", WorkerTestBed.AdapterId, UnlearningTasks.Remove, [ridge.Ids[i]]))
            .ToList();

    private static async Task AssertNothingLostAsync(WorkerTestBed bed, RidgeOracle ridge, List<UnlearningRequested> requests, List<UnlearningCompleted> completions)
    {
        var audit = await ChainAudit.LoadAsync(bed.Store, WorkerTestBed.AdapterId);
        bed.Log(audit.Describe());
        audit.AssertExactlyOnce(requests.Select(r => r.RequestId).ToList(), completions);
        var union = requests.SelectMany(r => r.SampleIds).ToList();
        string head = await bed.DownloadAsync(audit.Head);
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(head), ridge.Retrain(union), $"head version {audit.Head}");
    }
}

/// <summary>Polls a worker's <c>/health/ready</c> every 250 ms and records the transitions (status and body — Healthy,
/// Degraded, Unhealthy — or no answer within 5 s).</summary>
public sealed class ReadinessProbe : IAsyncDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly List<(TimeSpan At, string Status)> _transitions = [];
    private readonly Task _loop;

    private ReadinessProbe(WorkerProcess worker)
    {
        var clock = Stopwatch.StartNew();
        _loop = Task.Run(async () =>
        {
            string? last = null;
            using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
            while (!_stop.IsCancellationRequested)
            {
                string text;
                try
                {
                    using var response = await http.GetAsync($"http://127.0.0.1:{worker.HttpPort}/health/ready");
                    text = $"{(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}";
                }
                catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
                {
                    text = "no answer";
                }
                if (text != last)
                {
                    lock (_transitions)
                        _transitions.Add((clock.Elapsed, text));
                    last = text;
                }
                try
                {
                    await Task.Delay(250, _stop.Token);
                }
                catch (OperationCanceledException)
                {
                }
            }
        });
    }

    public static ReadinessProbe Start(WorkerProcess worker) => new(worker);

    public bool SawNotReady
    {
        get
        {
            lock (_transitions)
                return _transitions.Any(t => !t.Status.StartsWith("200", StringComparison.Ordinal));
        }
    }

    /// <summary>True when the probe saw not-ready and then ready again.</summary>
    public bool SawRecovery
    {
        get
        {
            lock (_transitions)
            {
                int down = _transitions.FindIndex(t => !t.Status.StartsWith("200", StringComparison.Ordinal));
                return down >= 0 && _transitions.Skip(down).Any(t => t.Status.StartsWith("200", StringComparison.Ordinal));
            }
        }
    }

    /// <summary>Waits (up to <paramref name="timeout"/>) until the probe has seen the worker ready again after not ready.</summary>
    public async Task<bool> WaitRecoveryAsync(TimeSpan timeout)
    {
        var watch = Stopwatch.StartNew();
        while (!SawRecovery && watch.Elapsed < timeout)
            await Task.Delay(100);
        return SawRecovery;
    }

    public string Describe()
    {
        lock (_transitions)
            return string.Join(" → ", _transitions.Select(t => $"{t.Status} at {t.At.TotalSeconds:F1} s"));
    }

    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync();
        await _loop;
        _stop.Dispose();
    }
}
