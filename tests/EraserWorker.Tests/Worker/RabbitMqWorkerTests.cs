using System.Net;
using System.Text;
using EraserWorker.Contracts;
using EraserWorker.Components.Messaging;
using EraserWorker.Messaging;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using MassTransit;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Worker;

/// <summary>
/// The worker as a process (<c>dotnet EraserWorker.dll</c>) against the real RabbitMQ and Azurite that
/// scripts/test.sh starts (SPEC §3, §4): each test has its own virtual host and blob container, talks to the worker
/// only through the broker (plain JSON, as a non-.NET system would) and checks the adapter downloaded from the store
/// against exact retraining (<see cref="RidgeOracle"/>).
/// </summary>
public sealed class RabbitMqWorkerTests(ITestOutputHelper output)
{
    private static readonly TimeSpan EventTimeout = TimeSpan.FromSeconds(60);

    /// <summary>Publishes with pika: the request is built and serialised by Python's json module.</summary>
    private const string PikaPublisher = """
        import json, sys
        import pika

        # publish.py AMQP_URL EXCHANGE REQUEST_ID ADAPTER_ID TASK SAMPLE_ID...
        url, exchange = sys.argv[1], sys.argv[2]
        body = json.dumps({"requestId": sys.argv[3], "adapterId": sys.argv[4], "task": sys.argv[5],
                           "sampleIds": sys.argv[6:]}).encode("utf-8")
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange=exchange, routing_key="", body=body,
                              properties=pika.BasicProperties(content_type="application/json", delivery_mode=2))
        connection.close()
        print("published " + body.decode("utf-8"))
        """;

    [ServiceFact]
    public async Task Raw_json_request_published_by_python_pika_completes_and_equals_retraining()
    {
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(seed: 11);
        await bed.RegisterAsync(ridge);
        await bed.StartWorkerAsync();
        var broker = await bed.ConnectBrokerAsync();

        string[] removed = [ridge.Ids[3], ridge.Ids[17]]; // ridge.Ids[3] is "sample-ü-003": not ASCII
        string published = await bed.RunPythonAsync(PikaPublisher,
            [bed.VirtualHost.AmqpUri, ExchangeNames.UnlearningRequested, "gdpr-2026-0042", WorkerTestBed.AdapterId, "remove", .. removed]);
        Assert.StartsWith("published {", published);
        bed.Log(published.Trim());

        var completed = (await broker.WaitCompletedAsync(["gdpr-2026-0042"], EventTimeout, bed.Diagnostics)).Single();
        var version = (await broker.WaitAsync<AdapterVersionPublished>(ExchangeNames.AdapterVersionPublished, v => v.Version == 1, 1, EventTimeout,
            "AdapterVersionPublished of version 1", bed.Diagnostics)).Single();

        Assert.Equal(WorkerTestBed.AdapterId, completed.AdapterId);
        Assert.Equal(1, completed.Version);
        Assert.Matches("^[0-9a-f]{64}$", completed.Sha256);
        Assert.Contains(BlobLayout.Version(WorkerTestBed.AdapterId, 1).TrimEnd('/'), completed.AdapterUri);
        Assert.Contains(bed.Container.Name, completed.AdapterUri);
        Assert.Contains(completed.Solver.Name, new[] { "direct", "cg", "llmeraser" });
        Assert.True(completed.Solver.RelativeResidual < 1e-6, $"relative residual {completed.Solver.RelativeResidual:E2}");
        Assert.Equal(0, completed.Solver.Damping); // l2 > 0: no damping (SPEC §1)
        Assert.Equal(new[] { "gdpr-2026-0042" }, version.RequestIds);
        Assert.Equal((completed.AdapterId, completed.Version, completed.AdapterUri, completed.Sha256),
            (version.AdapterId, version.Version, version.AdapterUri, version.Sha256));
        Assert.Empty(broker.Failed);

        string dir = await bed.DownloadAsync(1);
        Assert.Equal(completed.Sha256, WorkerTestBed.Sha256OfFile(WorkerTestBed.ModelFile(dir)));
        double relative = ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(dir), ridge.Retrain(removed), "version 1");
        bed.Log($"version 1 vs exact retraining: relative error {relative:E2}");
        Assert.Equal(new[] { 0, 1 }, await bed.Store.ListVersionsAsync(WorkerTestBed.AdapterId));
        Assert.Equal(1, (await bed.Store.GetHeadAsync(WorkerTestBed.AdapterId))!.Version);
    }

    [ServiceFact]
    public async Task Bad_requests_in_a_batch_fail_alone_with_their_codes_and_the_good_ones_complete()
    {
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(seed: 12);
        await bed.RegisterAsync(ridge);
        // A longer batch window, so that the requests published together surely share one batch.
        await bed.StartWorkerAsync(batchTimeLimit: TimeSpan.FromSeconds(1.5));
        var broker = await bed.ConnectBrokerAsync();
        string id = WorkerTestBed.AdapterId;
        string missingSet = RequestValidation.FormatReplacementsUri(id, "r-does-not-exist");

        var good = new[]
        {
            new UnlearningRequested("good-1", id, UnlearningTasks.Remove, [ridge.Ids[1]]),
            new UnlearningRequested("good-2", id, UnlearningTasks.Remove, [ridge.Ids[5], ridge.Ids[10]]),
            new UnlearningRequested("good-3", id, UnlearningTasks.Remove, [ridge.Ids[24]]),
        };
        var bad = new (UnlearningRequested Request, string Code)[]
        {
            (new UnlearningRequested("bad-unknown-sample", id, UnlearningTasks.Remove, [ridge.Ids[2], "no-such-sample"]), FailureCodes.UnknownSample),
            (new UnlearningRequested("bad-adapter-id", "Tenant A/../x", UnlearningTasks.Remove, [ridge.Ids[3]]), FailureCodes.InvalidRequest),
            (new UnlearningRequested("bad-unknown-adapter", "tenant-a/nobody", UnlearningTasks.Remove, [ridge.Ids[4]]), FailureCodes.UnknownAdapter),
            (new UnlearningRequested("bad-no-replacements", id, UnlearningTasks.ModifyQuery, [ridge.Ids[6]]), FailureCodes.InvalidRequest),
            (new UnlearningRequested("bad-missing-set", id, UnlearningTasks.CorrectResponse, [ridge.Ids[7]], missingSet), FailureCodes.ReplacementMissing),
            (new UnlearningRequested("bad-task", id, "forget", [ridge.Ids[8]]), FailureCodes.InvalidRequest),
            (new UnlearningRequested("bad-empty", id, UnlearningTasks.Remove, []), FailureCodes.InvalidRequest),
        };
        // Good and bad interleaved, all at once.
        await broker.PublishAsync(good[0]);
        foreach (var (request, _) in bad.Take(4))
            await broker.PublishAsync(request);
        await broker.PublishAsync(good[1]);
        foreach (var (request, _) in bad.Skip(4))
            await broker.PublishAsync(request);
        await broker.PublishAsync(good[2]);

        var failed = await broker.WaitFailedAsync(bad.Select(b => b.Request.RequestId).ToList(), EventTimeout, bed.Diagnostics);
        var completed = await broker.WaitCompletedAsync(good.Select(g => g.RequestId).ToList(), EventTimeout, bed.Diagnostics);
        bed.Log("failures: " + string.Join("; ", failed.Select(f => $"{f.RequestId} {f.Code}: {f.Message}")));

        foreach (var ((request, code), failure) in bad.Zip(failed))
        {
            Assert.True(code == failure.Code, $"{request.RequestId}: expected {code}, got {failure.Code} ({failure.Message})");
            Assert.Equal(request.AdapterId, failure.AdapterId);
            Assert.False(string.IsNullOrWhiteSpace(failure.Message));
        }
        Assert.Contains("no-such-sample", failed[0].Message);
        // No good request failed, no bad one completed.
        Assert.DoesNotContain(broker.Failed, f => good.Any(g => g.RequestId == f.RequestId));
        Assert.DoesNotContain(broker.Completed, c => bad.Any(b => b.Request.RequestId == c.RequestId));

        // The good ones shared one batch, hence one version, which their bad batch-mates did not disturb.
        Assert.All(completed, c => Assert.Equal(1, c.Version));
        Assert.Equal(new[] { 0, 1 }, await bed.Store.ListVersionsAsync(id));
        var manifest = await bed.ManifestAsync(1);
        Assert.Equal(good.Select(g => g.RequestId).Order(StringComparer.Ordinal), WorkerTestBed.AppliedRequestIds(manifest).Order(StringComparer.Ordinal));
        var published = Assert.Single(broker.Published);
        Assert.Equal(good.Select(g => g.RequestId).Order(StringComparer.Ordinal), published.RequestIds.Order(StringComparer.Ordinal));

        string dir = await bed.DownloadAsync(1);
        Assert.Equal(completed[0].Sha256, WorkerTestBed.Sha256OfFile(WorkerTestBed.ModelFile(dir)));
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(dir), ridge.Retrain(good.SelectMany(g => g.SampleIds)), "version 1 (good requests only)");
    }

    [ServiceFact]
    public async Task Duplicate_delivery_applies_once_and_re_emits_the_completion()
    {
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(seed: 13);
        await bed.RegisterAsync(ridge);
        await bed.StartWorkerAsync();
        var broker = await bed.ConnectBrokerAsync();
        var request = new UnlearningRequested("dup-1", WorkerTestBed.AdapterId, UnlearningTasks.Remove, [ridge.Ids[7]]);

        // Delivered twice at once (same batch, or two batches), ...
        await broker.PublishAsync(request);
        await broker.PublishAsync(request);
        var first = (await broker.WaitCompletedAsync(["dup-1"], EventTimeout, bed.Diagnostics)).Single();
        Assert.Equal(1, first.Version);
        await broker.CollectForAsync(TimeSpan.FromSeconds(1.5)); // a second batch would answer by now
        int before = broker.Completed.Count(c => c.RequestId == "dup-1");

        // ... and once more after its completion: answered again with the same version, never re-applied.
        await broker.PublishAsync(request);
        var again = await broker.WaitAsync<UnlearningCompleted>(ExchangeNames.UnlearningCompleted, c => c.RequestId == "dup-1", before + 1, EventTimeout,
            "the re-emitted UnlearningCompleted of dup-1", bed.Diagnostics);
        Assert.All(again, c => Assert.Equal((1, first.AdapterUri, first.Sha256), (c.Version, c.AdapterUri, c.Sha256)));

        // The next request builds on top of it: version 2, whose history still says dup-1 → 1.
        await broker.PublishAsync(new UnlearningRequested("after-dup", WorkerTestBed.AdapterId, UnlearningTasks.Remove, [ridge.Ids[9]]));
        var next = (await broker.WaitCompletedAsync(["after-dup"], EventTimeout, bed.Diagnostics)).Single();
        Assert.Equal(2, next.Version);
        await broker.CollectForAsync(TimeSpan.FromSeconds(0.5));

        Assert.Equal(new[] { 0, 1, 2 }, await bed.Store.ListVersionsAsync(WorkerTestBed.AdapterId));
        Assert.Equal(new[] { "dup-1" }, WorkerTestBed.AppliedRequestIds(await bed.ManifestAsync(1)));
        Assert.Equal(new[] { "after-dup" }, WorkerTestBed.AppliedRequestIds(await bed.ManifestAsync(2)));
        // Announcements are at least once: the delivery after completion announces version 1 again.
        Assert.Equal(new[] { 1, 2 }, broker.Published.Select(p => p.Version).Distinct().Order());
        Assert.True(broker.Published.Count(p => p.Version == 1) >= 2, $"version 1 announced {broker.Published.Count(p => p.Version == 1)} time(s); the redelivery must announce it again");
        Assert.All(broker.Published.Where(p => p.Version == 1), p => Assert.Equal((first.Sha256, "dup-1"), (p.Sha256, Assert.Single(p.RequestIds))));
        Assert.Empty(broker.Failed);
        Assert.All(broker.Completed.Where(c => c.RequestId == "dup-1"), c => Assert.Equal(1, c.Version));
        bed.Log($"dup-1 answered {broker.Completed.Count(c => c.RequestId == "dup-1")} times for 3 deliveries");

        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(await bed.DownloadAsync(1)), ridge.Retrain([ridge.Ids[7]]), "version 1");
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(await bed.DownloadAsync(2)), ridge.Retrain([ridge.Ids[7], ridge.Ids[9]]), "version 2");
    }

    [ServiceFact]
    public async Task Malformed_bodies_are_dead_lettered_and_the_worker_stays_healthy()
    {
        const string errorQueue = "eraser-unlearning-requested_error";
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(seed: 14);
        await bed.RegisterAsync(ridge);
        var worker = await bed.StartWorkerAsync();
        var broker = await bed.ConnectBrokerAsync();

        // Not JSON, and JSON that is not an object: nothing to answer to; they must end up in the error queue.
        await broker.PublishRawAsync("{not json"u8.ToArray());
        await broker.PublishRawAsync("[1,2,3]"u8.ToArray());
        // A JSON object without the required fields: a request that can be answered, with InvalidRequest.
        await broker.PublishRawAsync("""{"requestId":"partial-1","adapterId":"tenant-a/support-bot"}"""u8.ToArray());

        var watch = System.Diagnostics.Stopwatch.StartNew();
        uint? dead = 0;
        while (watch.Elapsed < EventTimeout && ((dead = await bed.VirtualHost.MessageCountAsync(errorQueue)) ?? 0) < 2)
            await Task.Delay(200);
        bed.Log($"{errorQueue}: {dead} message(s) after {watch.Elapsed.TotalSeconds:F1} s");
        Assert.True(dead == 2, $"expected the 2 malformed bodies in {errorQueue}, found {(dead is null ? "no such queue" : dead.ToString())} " +
                               $"after {watch.Elapsed.TotalSeconds:F0} s.\nskipped queue: {await bed.VirtualHost.MessageCountAsync("eraser-unlearning-requested_skipped")}\n{bed.Diagnostics()}");

        var partial = (await broker.WaitFailedAsync(["partial-1"], EventTimeout, bed.Diagnostics)).Single();
        Assert.Equal(FailureCodes.InvalidRequest, partial.Code);

        Assert.False(worker.HasExited, worker.Tail());
        Assert.Equal(HttpStatusCode.OK, await worker.ReadyStatusAsync());

        await broker.PublishAsync(new UnlearningRequested("after-malformed", WorkerTestBed.AdapterId, UnlearningTasks.Remove, [ridge.Ids[20]]));
        var completed = (await broker.WaitCompletedAsync(["after-malformed"], EventTimeout, bed.Diagnostics)).Single();
        Assert.Equal(1, completed.Version);
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(await bed.DownloadAsync(1)), ridge.Retrain([ridge.Ids[20]]), "version 1");

        // The dead letters are the bodies as sent, with MassTransit's fault headers.
        await using var connection = await bed.VirtualHost.ConnectAsync();
        await using var channel = await connection.CreateChannelAsync();
        var bodies = new List<string>();
        for (int i = 0; i < 2; i++)
        {
            var message = await channel.BasicGetAsync(errorQueue, autoAck: true);
            Assert.NotNull(message);
            bodies.Add(Encoding.UTF8.GetString(message.Body.Span));
            Assert.True(message.BasicProperties.Headers?.Keys.Any(k => k.StartsWith("MT-Fault", StringComparison.Ordinal)) == true,
                $"dead letter without MT-Fault-* headers: {string.Join(", ", message.BasicProperties.Headers?.Keys ?? [])}");
        }
        Assert.Equal(new[] { "[1,2,3]", "{not json" }, bodies.Order(StringComparer.Ordinal));
        Assert.Equal(HttpStatusCode.OK, await worker.ReadyStatusAsync());
    }

    [ServiceFact]
    public async Task MassTransit_publishers_are_served_with_the_envelope_and_with_plain_json()
    {
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(seed: 16);
        await bed.RegisterAsync(ridge);
        await bed.StartWorkerAsync();
        var broker = await bed.ConnectBrokerAsync();

        // A .NET system with the contracts assembly and MassTransit's default envelope serializer: only the
        // entity name is set to the SPEC exchange.
        await PublishWithMassTransitAsync(bed, cfg => cfg.Message<UnlearningRequested>(m => m.SetEntityName(ExchangeNames.UnlearningRequested)),
            new UnlearningRequested("mt-envelope-1", WorkerTestBed.AdapterId, UnlearningTasks.Remove, [ridge.Ids[11]]));
        // The same with the worker's own topology (plain JSON on the wire).
        await PublishWithMassTransitAsync(bed, MessagingExtensions.ConfigureTopology,
            new UnlearningRequested("mt-raw-1", WorkerTestBed.AdapterId, UnlearningTasks.Remove, [ridge.Ids[12]]));

        var completed = await broker.WaitCompletedAsync(["mt-envelope-1", "mt-raw-1"], EventTimeout, bed.Diagnostics);
        Assert.Empty(broker.Failed);
        int last = completed.Max(c => c.Version);
        Assert.Equal(Enumerable.Range(0, last + 1), await bed.Store.ListVersionsAsync(WorkerTestBed.AdapterId));
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(await bed.DownloadAsync(last)), ridge.Retrain([ridge.Ids[11], ridge.Ids[12]]), $"version {last}");
    }

    private static async Task PublishWithMassTransitAsync(WorkerTestBed bed, Action<IRabbitMqBusFactoryConfigurator> topology, UnlearningRequested request)
    {
        var vhost = bed.VirtualHost;
        var bus = Bus.Factory.CreateUsingRabbitMq(cfg =>
        {
            cfg.Host(vhost.Host, (ushort)vhost.Port, vhost.Name, h =>
            {
                h.Username(vhost.Username);
                h.Password(vhost.Password);
            });
            topology(cfg);
        });
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        await bus.StartAsync(timeout.Token);
        try
        {
            await bus.Publish(request, timeout.Token);
        }
        finally
        {
            await bus.StopAsync(CancellationToken.None);
        }
    }

    [ServiceFact]
    public async Task Query_modification_and_response_correction_equal_retraining_with_the_corrected_samples()
    {
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(seed: 17);
        await bed.RegisterAsync(ridge);
        var corrections = new Dictionary<string, RidgeOracle.Correction>
        {
            [ridge.Ids[13]] = ridge.NewCorrection(),
            [ridge.Ids[14]] = ridge.NewCorrection(),
        };
        string setDir = Path.Combine(bed.Temp.Path, "replacements");
        ridge.WriteReplacements(setDir, corrections);
        string uri = await bed.Store.UploadReplacementsAsync(WorkerTestBed.AdapterId, AdapterStore.NewReplacementName(), setDir);
        await bed.StartWorkerAsync();
        var broker = await bed.ConnectBrokerAsync();

        await broker.PublishAsync(new UnlearningRequested("rc-1", WorkerTestBed.AdapterId, UnlearningTasks.CorrectResponse, [ridge.Ids[13]], uri));
        await broker.PublishAsync(new UnlearningRequested("qm-1", WorkerTestBed.AdapterId, UnlearningTasks.ModifyQuery, [ridge.Ids[14]], uri));
        var completed = await broker.WaitCompletedAsync(["rc-1", "qm-1"], EventTimeout, bed.Diagnostics);
        Assert.Empty(broker.Failed);

        int last = completed.Max(c => c.Version);
        var manifest = await bed.ManifestAsync(last);
        Assert.Equal(uri, manifest.Edits.Replaced[ridge.Ids[13]]);
        Assert.Equal(uri, manifest.Edits.Replaced[ridge.Ids[14]]);
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(await bed.DownloadAsync(last)), ridge.Retrain([], corrections), $"version {last}");
    }
}
