using System.Diagnostics;
using System.Net;
using System.Text;
using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using EraserWorker.Tests.Worker;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Reliability;

/// <summary>
/// Hostile input on the request path of the worker process (real RabbitMQ and Azurite): every body gets exactly one
/// answer — a failure event with a code, or, when it cannot even be parsed into a request, a dead letter with a reason —
/// while good requests published in between complete and equal retraining, the worker stays ready, and no blob is ever
/// named after a hostile id. The table these tests print is the one in docs/reliability.md.
/// </summary>
public sealed class HostileInputTests(ITestOutputHelper output)
{
    public const string ErrorQueue = "eraser-unlearning-requested_error";
    public const string SkippedQueue = "eraser-unlearning-requested_skipped";
    private const string A = WorkerTestBed.AdapterId;
    private const string Unknown = "no-such-sample";
    private const int MaxSampleIds = 1000;

    public enum Expect
    {
        /// <summary>A failure event with <see cref="Hostile.Code"/>.</summary>
        Failure,
        /// <summary>Dead-lettered to <c>_error</c> (MassTransit's fault headers carry the reason).</summary>
        ErrorQueue,
        /// <summary>Dead-lettered to <c>_skipped</c> by the size limit (reason in MT-Reason), without an event.</summary>
        Skipped,
        /// <summary>Dead-lettered to <c>_skipped</c> by the size limit and answered with a failure event.</summary>
        FailureAndSkipped,
    }

    public sealed record Hostile(string Name, byte[] Body, Expect Expect, string RequestId = "", string AdapterId = "", string Code = "",
        string Reason = "");

    private static byte[] Utf8(string text) => Encoding.UTF8.GetBytes(text);

    /// <summary>A request body; values are JSON-escaped by the serializer (control characters included).</summary>
    private static byte[] Body(string? requestId, string? adapterId, string? task = "remove", IEnumerable<string?>? sampleIds = null,
        string? replacementsUri = null, Action<JsonObject>? change = null)
    {
        var o = new JsonObject();
        if (requestId is not null)
            o["requestId"] = requestId;
        if (adapterId is not null)
            o["adapterId"] = adapterId;
        if (task is not null)
            o["task"] = task;
        o["sampleIds"] = new JsonArray((sampleIds ?? [Unknown]).Select(s => (JsonNode?)s).ToArray());
        if (replacementsUri is not null)
            o["replacementsUri"] = replacementsUri;
        change?.Invoke(o);
        return Utf8(o.ToJsonString());
    }

    private static Hostile Invalid(string name, string requestId, string adapterId, string? task = "remove", IEnumerable<string?>? sampleIds = null,
        string? replacementsUri = null) =>
        new(name, Body(requestId, adapterId, task, sampleIds, replacementsUri), Expect.Failure, requestId.Length > 128 ? requestId[..128] : requestId,
            adapterId.Length > 200 ? adapterId[..200] : adapterId, FailureCodes.InvalidRequest);

    public static List<Hostile> Cases()
    {
        string huge = "{\"requestId\":\"h-10mb\",\"adapterId\":\"" + A + "\",\"task\":\"remove\",\"sampleIds\":[" +
                      string.Join(",", Enumerable.Range(0, 950_000).Select(i => $"\"x{i:D7}\"")) + "]}";
        var garbage = new byte[10 << 20];
        new Random(7).NextBytes(garbage);
        string otherSet = RequestValidation.FormatReplacementsUri("tenant-b/other", "r-1");
        return
        [
            // --- cannot be parsed into a request: dead-lettered with MassTransit's fault headers
            new("not JSON", Utf8("{not json"), Expect.ErrorQueue),
            new("empty body (read as a request with every field missing)", [], Expect.Failure, "", "", FailureCodes.InvalidRequest),
            new("truncated JSON", Utf8("{\"requestId\":\"h-trunc\",\"adapterId\":\"" + A + "\",\"task\":\"remove\",\"sampleIds\":[\"s001\""), Expect.ErrorQueue),
            new("JSON array, not an object", Utf8("[1,2,3]"), Expect.ErrorQueue),
            new("JSON string, not an object", Utf8("\"hello\""), Expect.ErrorQueue),
            new("invalid UTF-8", [.. Utf8("{\"requestId\":\"h-utf8-"), 0xFF, 0xFE, .. Utf8("\",\"adapterId\":\"" + A + "\",\"task\":\"remove\",\"sampleIds\":[\"x\"]}")], Expect.ErrorQueue),
            new("requestId is a number", Body("h-num", A, change: o => o["requestId"] = 12345), Expect.ErrorQueue),
            new("sampleIds is a string", Body("h-ids-string", A, change: o => o["sampleIds"] = "s001"), Expect.ErrorQueue),
            new("sampleIds holds numbers", Body("h-ids-numbers", A, change: o => o["sampleIds"] = new JsonArray(1, 2)), Expect.ErrorQueue),
            new("task is an object", Body("h-task-object", A, change: o => o["task"] = new JsonObject { ["x"] = 1 }), Expect.ErrorQueue),
            new("1000 levels of nesting inside", Utf8("{\"requestId\":\"h-deep\",\"adapterId\":\"" + A + "\",\"task\":\"remove\",\"sampleIds\":[\"x\"],\"extra\":" +
                                                     new string('[', 1000) + new string(']', 1000) + "}"), Expect.ErrorQueue),
            new("100 000 levels of nesting", Utf8(new string('[', 100_000) + new string(']', 100_000)), Expect.ErrorQueue),
            new("lone surrogate escape in a sample id", Utf8("{\"requestId\":\"h-surrogate\",\"adapterId\":\"" + A + "\",\"task\":\"remove\",\"sampleIds\":[\"a\\ud800b\"]}"), Expect.ErrorQueue),

            // --- over Eraser:Worker:MaxMessageBytes (1 MiB): refused before deserialisation
            new("10 MB body (950 000 sample ids)", Utf8(huge), Expect.FailureAndSkipped, "h-10mb", A, FailureCodes.InvalidRequest, "MaxMessageBytes"),
            new("10 MB of random bytes", garbage, Expect.Skipped, Reason: "MaxMessageBytes"),

            // --- parsed, refused by validation (InvalidRequest)
            new("5000 sample ids (limit 1000)", Body("h-5000", A, sampleIds: Enumerable.Range(0, 5000).Select(i => $"x{i:D4}")), Expect.Failure, "h-5000", A, FailureCodes.InvalidRequest),
            Invalid("requestId not ASCII", "h-ünïcödé", A),
            Invalid("requestId empty", "", "tenant-a/case-empty-request-id"),
            new("requestId missing", Body(null, "tenant-a/case-no-request-id"), Expect.Failure, "", "tenant-a/case-no-request-id", FailureCodes.InvalidRequest),
            new("requestId null", Body("x", "tenant-a/case-null-request-id", change: o => o["requestId"] = null), Expect.Failure, "", "tenant-a/case-null-request-id", FailureCodes.InvalidRequest),
            Invalid("requestId of 300 characters", "h-long-" + new string('r', 293), A),
            Invalid("requestId with a control character", "h-bell\u0007", A),
            Invalid("requestId with a line break (log injection)", "h-inject\nFAKE-LOG-LINE fail: forged", A),
            Invalid("adapterId empty", "h-adapter-empty", ""),
            Invalid("adapterId ..", "h-adapter-dotdot", ".."),
            Invalid("adapterId ../etc", "h-adapter-traversal", "../etc"),
            Invalid("adapterId with an empty segment", "h-adapter-empty-segment", "tenant-a//support-bot"),
            Invalid("adapterId with a leading /", "h-adapter-leading-slash", "/tenant-a/support-bot"),
            Invalid("adapterId with a trailing /", "h-adapter-trailing-slash", "tenant-a/support-bot/"),
            Invalid("adapterId with a backslash", "h-adapter-backslash", "tenant-a\\support-bot"),
            Invalid("adapterId with NUL", "h-adapter-nul", "tenant-a/support-bot\u0000"),
            Invalid("adapterId with a line break", "h-adapter-newline", "tenant-a/support-bot\n"),
            Invalid("adapterId with a . segment", "h-adapter-dot", "tenant-a/./support-bot"),
            Invalid("adapterId uppercase", "h-adapter-upper", "Tenant-A/support-bot"),
            Invalid("adapterId not ASCII", "h-adapter-unicode", "tenant-ä/support-bot"),
            Invalid("adapterId of 201 characters", "h-adapter-long", new string('a', 201)),
            Invalid("adapterId naming another adapter's cache folder", "h-adapter-reserved", A + "/cache"),
            Invalid("sample id with a line feed", "h-sample-lf", A, sampleIds: ["a\nb"]),
            Invalid("sample id with U+2028", "h-sample-ls", A, sampleIds: ["a\u2028b"]),
            Invalid("sample id empty", "h-sample-empty", A, sampleIds: [""]),
            Invalid("sample id of 300 characters", "h-sample-long", A, sampleIds: [new string('x', 300)]),
            Invalid("sample id null", "h-sample-null", A, sampleIds: [null]),
            Invalid("duplicate sample ids in one request", "h-sample-dup", A, sampleIds: ["s001", "s002", "s001"]),
            Invalid("no sample ids", "h-sample-none", A, sampleIds: []),
            new("sampleIds null", Body("h-sample-ids-null", A, change: o => o["sampleIds"] = null), Expect.Failure, "h-sample-ids-null", A, FailureCodes.InvalidRequest),
            Invalid("unknown task", "h-task-unknown", A, task: "forget"),
            Invalid("task in the wrong case", "h-task-case", A, task: "Remove"),
            new("task missing", Body("h-task-missing", A, task: null), Expect.Failure, "h-task-missing", A, FailureCodes.InvalidRequest),
            Invalid("replacementsUri on a remove", "h-uri-remove", A, replacementsUri: RequestValidation.FormatReplacementsUri(A, "r-1")),
            Invalid("modifyQuery without replacementsUri", "h-uri-missing", A, task: "modifyQuery"),
            Invalid("replacementsUri of another adapter", "h-uri-other", A, task: "correctResponse", replacementsUri: otherSet),
            Invalid("replacementsUri with ..", "h-uri-dotdot", A, task: "correctResponse", replacementsUri: "eraser:adapters/../replacements/r-1"),
            Invalid("replacementsUri is a URL", "h-uri-url", A, task: "correctResponse", replacementsUri: "https://evil.example/set"),

            // --- valid requests that cannot be applied
            new("unknown sample", Body("h-unknown-sample", A, sampleIds: ["s001", Unknown]), Expect.Failure, "h-unknown-sample", A, FailureCodes.UnknownSample),
            new("unknown adapter", Body("h-unknown-adapter", "tenant-b/ghost"), Expect.Failure, "h-unknown-adapter", "tenant-b/ghost", FailureCodes.UnknownAdapter),
            new("replacement set that does not exist", Body("h-set-missing", A, "correctResponse", ["s006"], RequestValidation.FormatReplacementsUri(A, "r-nothing")),
                Expect.Failure, "h-set-missing", A, FailureCodes.ReplacementMissing),
            new("duplicate JSON property (last one wins)", Utf8("{\"requestId\":\"h-dupprop-1\",\"requestId\":\"h-dupprop-2\",\"adapterId\":\"" + A +
                                                                "\",\"task\":\"remove\",\"sampleIds\":[\"" + Unknown + "\"]}"), Expect.Failure, "h-dupprop-2", A, FailureCodes.UnknownSample),
            new("unknown extra property", Body("h-extra", A, change: o => o["extra"] = new JsonObject { ["deep"] = new JsonArray(1, 2) }), Expect.Failure, "h-extra", A, FailureCodes.UnknownSample),
        ];
    }

    [ServiceFact]
    public async Task Hostile_request_bodies_each_get_a_code_or_a_dead_letter_with_a_reason_and_nothing_else_is_affected()
    {
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(seed: 71);
        await bed.RegisterAsync(ridge);
        var worker = await bed.StartWorkerAsync("worker", batchTimeLimit: TimeSpan.FromMilliseconds(500),
            extra: new Dictionary<string, string> { ["Eraser__Worker__MaxSampleIdsPerRequest"] = MaxSampleIds.ToString(System.Globalization.CultureInfo.InvariantCulture) });
        var broker = await bed.ConnectBrokerAsync();

        var cases = Cases();
        var good = new[] { 1, 2, 4, 5 }.Select(i => new UnlearningRequested($"good-{i}", A, UnlearningTasks.Remove, [ridge.Ids[i]])).ToList();
        // Good requests between the hostile ones, so they share batches with them.
        int g = 0;
        for (int i = 0; i < cases.Count; i++)
        {
            if (i % 15 == 0 && g < good.Count)
                await broker.PublishAsync(good[g++]);
            await broker.PublishRawAsync(cases[i].Body);
        }
        while (g < good.Count)
            await broker.PublishAsync(good[g++]);

        await broker.WaitCompletedAsync(good.Select(r => r.RequestId).ToList(), TimeSpan.FromSeconds(90), bed.Diagnostics);
        var table = await CollectOutcomesAsync(bed, broker, cases);
        output.WriteLine("| input | outcome |\n|---|---|\n" + string.Join("\n", table.Select(t => $"| {t.Case.Name} | {t.Outcome} |")));

        var problems = table.Where(t => !t.AsExpected).Select(t => $"{t.Case.Name}: expected {t.Case.Expect} {t.Case.Code}{t.Case.Reason}, got {t.Outcome}").ToList();
        Assert.True(problems.Count == 0, "unexpected outcomes:\n" + string.Join("\n", problems) + "\n" + bed.Diagnostics());

        // The good requests were not disturbed: one version of their own, equal to retraining.
        Assert.DoesNotContain(broker.Failed, f => good.Any(r => r.RequestId == f.RequestId));
        var audit = await ChainAudit.LoadAsync(bed.Store, A);
        audit.AssertExactlyOnce(good.Select(r => r.RequestId).ToList(), broker.Completed);
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(await bed.DownloadAsync(audit.Head)), ridge.Retrain(good.SelectMany(r => r.SampleIds)), "head");

        // The worker is alive and ready; no log line was forged; no blob was named after a hostile id.
        Assert.False(worker.HasExited, worker.Tail());
        Assert.Equal(HttpStatusCode.OK, await worker.ReadyStatusAsync());
        Assert.DoesNotContain(worker.Output.Split('\n'), line => line.Contains("] FAKE-LOG-LINE", StringComparison.Ordinal));
        await AssertBlobsOnlyUnderAsync(bed, A);
    }

    /// <summary>
    /// Hostile data behind valid requests: replacement sets with a non-finite value, the wrong parameter count, a
    /// truncated shard, a lying safetensors header or ids that do not match the rows; adapters whose cache does not match
    /// them, whose model file is truncated or whose header lies; a NaN in the base cache that only the solve meets. Each request fails alone with <c>InvalidCache</c> (SPEC
    /// §2's rejections), nothing is dead-lettered, and the good requests of the same batches complete exactly.
    /// </summary>
    [ServiceFact]
    public async Task Hostile_data_bad_replacement_sets_and_mismatched_caches_fail_alone_with_InvalidCache()
    {
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(seed: 72);
        await bed.RegisterAsync(ridge);
        var other = new RidgeOracle(inFeatures: 5, seed: 73); // P = 18 instead of 20
        var (adapterDir, cacheDir) = ridge.WriteFiles(bed.Temp.Sub("a"));
        var (_, otherCache) = other.WriteFiles(bed.Temp.Sub("other"));

        // Adapters whose stored data is unusable (the store does not look inside files; the worker must).
        await bed.Store.RegisterAsync("tenant-a/cache-mismatch", adapterDir, otherCache);
        string truncatedAdapter = CopyFolder(adapterDir, bed.Temp.Sub("truncated-adapter"));
        Truncate(Path.Combine(truncatedAdapter, StoredFileNames.AdapterWeights), 100);
        await bed.Store.RegisterAsync("tenant-a/truncated-adapter", truncatedAdapter, cacheDir);
        string lyingAdapter = CopyFolder(adapterDir, bed.Temp.Sub("lying-adapter"));
        LieAboutDataOffsets(Path.Combine(lyingAdapter, StoredFileNames.AdapterWeights));
        await bed.Store.RegisterAsync("tenant-a/lying-adapter", lyingAdapter, cacheDir);

        // An adapter whose base cache holds a NaN in one sample's gradient row: only a request that removes that sample
        // reads the row — in the middle of the batch's solve. It must fail alone; its batch-mates must be applied.
        string nanCache = CopyFolder(cacheDir, bed.Temp.Sub("nan-cache"));
        PutNaN(Path.Combine(nanCache, "shard-00000.safetensors"), row: 5, ridge.P);
        await bed.Store.RegisterAsync("tenant-a/nan-gradient", adapterDir, nanCache);

        // Replacement sets of the good adapter.
        var corrections = Enumerable.Range(10, 6).ToDictionary(i => ridge.Ids[i], _ => ridge.NewCorrection());
        async Task<string> Set(string name, int index, Action<string>? spoil = null, RidgeOracle? writer = null)
        {
            string dir = Path.Combine(bed.Temp.Path, "set-" + name);
            var id = ridge.Ids[index];
            if (writer is null)
                ridge.WriteReplacements(dir, new Dictionary<string, RidgeOracle.Correction> { [id] = corrections[id] });
            else
                writer.WriteReplacements(dir, new Dictionary<string, RidgeOracle.Correction> { [id] = writer.NewCorrection() });
            spoil?.Invoke(dir);
            return await bed.Store.UploadReplacementsAsync(A, AdapterStore.NewReplacementName(), dir);
        }
        string goodSet = await Set("good", 10);
        string nanSet = await Set("nan", 11, dir => PutNaN(Path.Combine(dir, "shard-00000.safetensors")));
        string wrongP = await Set("wrong-p", 12, writer: other);
        string truncatedSet = await Set("truncated", 13, dir => Truncate(Path.Combine(dir, "shard-00000.safetensors"), 60));
        string lyingSet = await Set("lying", 14, dir => LieAboutDataOffsets(Path.Combine(dir, "shard-00000.safetensors")));
        string idsSet = await Set("ids", 15, dir => File.AppendAllText(Path.Combine(dir, "shard-00000.ids"), "extra-id\n"));

        await bed.StartWorkerAsync("worker", batchTimeLimit: TimeSpan.FromMilliseconds(800));
        var broker = await bed.ConnectBrokerAsync();
        var good = new List<UnlearningRequested>
        {
            new("good-remove-1", A, UnlearningTasks.Remove, [ridge.Ids[1]]),
            new("good-correct", A, UnlearningTasks.CorrectResponse, [ridge.Ids[10]], goodSet),
            new("good-remove-3", A, UnlearningTasks.Remove, [ridge.Ids[3]]),
        };
        var bad = new List<(string Name, UnlearningRequested Request)>
        {
            ("replacement set with a NaN gradient", new("bad-nan", A, UnlearningTasks.ModifyQuery, [ridge.Ids[11]], nanSet)),
            ("replacement set with the wrong P", new("bad-p", A, UnlearningTasks.CorrectResponse, [ridge.Ids[12]], wrongP)),
            ("replacement set with a truncated shard", new("bad-truncated-set", A, UnlearningTasks.CorrectResponse, [ridge.Ids[13]], truncatedSet)),
            ("replacement set whose safetensors header lies", new("bad-lying-set", A, UnlearningTasks.CorrectResponse, [ridge.Ids[14]], lyingSet)),
            ("replacement set with more ids than rows", new("bad-ids-set", A, UnlearningTasks.CorrectResponse, [ridge.Ids[15]], idsSet)),
            ("adapter whose cache does not match it (P 18 vs 20)", new("bad-cache-mismatch", "tenant-a/cache-mismatch", UnlearningTasks.Remove, [ridge.Ids[2]])),
            ("adapter with a truncated safetensors file", new("bad-truncated-adapter", "tenant-a/truncated-adapter", UnlearningTasks.Remove, [ridge.Ids[2]])),
            ("adapter whose safetensors header lies", new("bad-lying-adapter", "tenant-a/lying-adapter", UnlearningTasks.Remove, [ridge.Ids[2]])),
            ("removal of a sample whose cached gradient is NaN (found during the batch's solve)", new("bad-nan-row", "tenant-a/nan-gradient", UnlearningTasks.Remove, [ridge.Ids[5]])),
        };
        // The NaN row's batch-mates on the same adapter.
        var nanMates = new List<UnlearningRequested>
        {
            new("good-nan-mate-1", "tenant-a/nan-gradient", UnlearningTasks.Remove, [ridge.Ids[6]]),
            new("good-nan-mate-2", "tenant-a/nan-gradient", UnlearningTasks.Remove, [ridge.Ids[8]]),
        };
        await broker.PublishAsync(good[0]);
        foreach (var (_, request) in bad.Take(4))
            await broker.PublishAsync(request);
        await broker.PublishAsync(good[1]);
        foreach (var (_, request) in bad.Skip(4))
            await broker.PublishAsync(request);
        await broker.PublishAsync(nanMates[0]);
        await broker.PublishAsync(good[2]);
        await broker.PublishAsync(nanMates[1]);

        var failed = await broker.WaitFailedAsync(bad.Select(b => b.Request.RequestId).ToList(), TimeSpan.FromSeconds(90), bed.Diagnostics);
        var completed = await broker.WaitCompletedAsync(good.Concat(nanMates).Select(g => g.RequestId).ToList(), TimeSpan.FromSeconds(90), bed.Diagnostics);
        output.WriteLine("| input | outcome |\n|---|---|\n" + string.Join("\n", bad.Zip(failed).Select(p => $"| {p.First.Name} | failure {p.Second.Code}: {Cut(p.Second.Message, 140).Replace("|", "\\|", StringComparison.Ordinal)} |")));
        foreach (var ((name, _), failure) in bad.Zip(failed))
            Assert.True(failure.Code == FailureCodes.InvalidCache, $"{name}: expected InvalidCache, got {failure.Code}: {failure.Message}");
        Assert.DoesNotContain(broker.Failed, f => good.Concat(nanMates).Any(g => g.RequestId == f.RequestId));
        Assert.Equal(0u, await bed.VirtualHost.MessageCountAsync(ErrorQueue) ?? 0);
        // Published within milliseconds, the NaN row and its mates share a batch: the batch's solve fails, the requests
        // are solved alone, the NaN one fails, the other two are applied together.
        Assert.Contains("request(s) of the batch for tenant-a/nan-gradient fail alone; solving the other 2 again", bed.Workers[0].Output);
        var nanAudit = await ChainAudit.LoadAsync(bed.Store, "tenant-a/nan-gradient");
        nanAudit.AssertExactlyOnce(nanMates.Select(g => g.RequestId).ToList(), broker.Completed.Where(c => c.AdapterId == "tenant-a/nan-gradient"));
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(await bed.DownloadAsync(nanAudit.Head, "tenant-a/nan-gradient")),
            ridge.Retrain([ridge.Ids[6], ridge.Ids[8]]), "tenant-a/nan-gradient head");

        // The worker goes on serving: one more request after all that.
        var after = new UnlearningRequested("good-after", A, UnlearningTasks.Remove, [ridge.Ids[4]]);
        await broker.PublishAsync(after);
        await broker.WaitCompletedAsync([after.RequestId], TimeSpan.FromSeconds(60), bed.Diagnostics);
        var audit = await ChainAudit.LoadAsync(bed.Store, A);
        audit.AssertExactlyOnce(good.Append(after).Select(g => g.RequestId).ToList(), broker.Completed.Where(c => c.AdapterId == A));
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(await bed.DownloadAsync(audit.Head)),
            ridge.Retrain([ridge.Ids[1], ridge.Ids[3], ridge.Ids[4]], new Dictionary<string, RidgeOracle.Correction> { [ridge.Ids[10]] = corrections[ridge.Ids[10]] }), "head");
        Assert.Equal(new[] { 0 }, await bed.Store.ListVersionsAsync("tenant-a/cache-mismatch"));
    }

    /// <summary>
    /// Random mutations of a valid body (seeded: <c>ERASER_FAULT_SEED</c>): truncations, deleted, inserted and
    /// duplicated bytes, swapped value types, stray unicode and surrogates, deep nesting, envelopes. Every body gets
    /// exactly one answer (a failure event or a dead letter), the good requests in between complete, and the worker stays
    /// ready.
    /// </summary>
    [ServiceFact]
    public async Task Fuzzed_bodies_each_get_exactly_one_answer_and_the_worker_stays_healthy()
    {
        var settings = FaultSettings.FromEnvironment(requests: 80, kills: 0);
        await using var bed = await WorkerTestBed.CreateAsync(output);
        bed.Log($"fuzz: {settings.Requests} bodies, seed {settings.Seed} ({FaultSettings.SeedVariable}={settings.Seed} to replay)");
        var ridge = new RidgeOracle(seed: 74);
        await bed.RegisterAsync(ridge);
        var worker = await bed.StartWorkerAsync("worker");
        var broker = await bed.ConnectBrokerAsync();
        var random = new Random(settings.Seed);
        var bodies = Enumerable.Range(0, settings.Requests).Select(i => Mutate(Body($"fz-{i:D3}", A, sampleIds: [$"no-such-{i}"]), random)).ToList();
        var good = new[] { 5, 6, 7 }.Select(i => new UnlearningRequested($"good-{i}", A, UnlearningTasks.Remove, [ridge.Ids[i]])).ToList();
        int next = 0, every = bodies.Count / good.Count + 1;
        for (int i = 0; i < bodies.Count; i++)
        {
            if (i % every == every / 2 && next < good.Count)
                await broker.PublishAsync(good[next++]);
            await broker.PublishRawAsync(bodies[i]);
        }
        foreach (var g in good.Skip(next))
            await broker.PublishAsync(g);
        await broker.WaitCompletedAsync(good.Select(g => g.RequestId).ToList(), TimeSpan.FromSeconds(90), bed.Diagnostics);

        async Task<(int Failed, int Completed, uint Error, uint Skipped)> CountAsync() =>
            (broker.Failed.Count, broker.Completed.Count(c => !c.RequestId.StartsWith("good-", StringComparison.Ordinal)),
             await bed.VirtualHost.MessageCountAsync(ErrorQueue) ?? 0, await bed.VirtualHost.MessageCountAsync(SkippedQueue) ?? 0);
        var watch = Stopwatch.StartNew();
        var counts = await CountAsync();
        while (counts.Failed + counts.Completed + counts.Error + counts.Skipped < bodies.Count && watch.Elapsed < TimeSpan.FromSeconds(60))
        {
            await Task.Delay(250);
            counts = await CountAsync();
        }
        await Task.Delay(2000);
        counts = await CountAsync();
        var codes = broker.Failed.GroupBy(f => f.Code).Select(g => $"{g.Key} {g.Count()}");
        bed.Log($"{bodies.Count} fuzzed bodies: {counts.Failed} failure events ({string.Join(", ", codes)}), {counts.Error} dead-lettered to _error, " +
                $"{counts.Skipped} to _skipped, {counts.Completed} completed");
        Assert.True(counts.Failed + counts.Completed + counts.Error + counts.Skipped == bodies.Count,
            $"{bodies.Count} bodies but {counts} answers (seed {settings.Seed})\n{bed.Diagnostics()}");
        Assert.Equal(0, counts.Completed);
        Assert.DoesNotContain(broker.Failed, f => f.RequestId.StartsWith("good-", StringComparison.Ordinal));
        Assert.Equal(HttpStatusCode.OK, await worker.ReadyStatusAsync());
        var audit = await ChainAudit.LoadAsync(bed.Store, A);
        audit.AssertExactlyOnce(good.Select(g => g.RequestId).ToList(), broker.Completed);
        ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(await bed.DownloadAsync(audit.Head)), ridge.Retrain(good.SelectMany(g => g.SampleIds)), "head");
        await AssertBlobsOnlyUnderAsync(bed, A);
    }

    private static byte[] Mutate(byte[] body, Random random)
    {
        var text = new List<byte>(body);
        int rounds = random.Next(1, 4);
        for (int r = 0; r < rounds; r++)
        {
            int at = random.Next(text.Count + 1);
            switch (random.Next(10))
            {
                case 0: // truncate
                    text.RemoveRange(at, text.Count - at);
                    break;
                case 1: // delete a span
                    text.RemoveRange(Math.Min(at, text.Count), Math.Min(random.Next(1, 12), text.Count - Math.Min(at, text.Count)));
                    break;
                case 2: // insert random bytes
                    var bytes = new byte[random.Next(1, 6)];
                    random.NextBytes(bytes);
                    text.InsertRange(at, bytes);
                    break;
                case 3: // a structural character
                    const string structural = "{}[]\",:\0\n\\ ";
                    text.Insert(at, (byte)structural[random.Next(structural.Length)]);
                    break;
                case 4: // duplicate a span
                    int from = random.Next(text.Count), length = Math.Min(random.Next(1, 30), text.Count - from);
                    text.InsertRange(at, text.GetRange(from, length));
                    break;
                case 5: // another type for a value
                    string[] values = ["123", "null", "[]", "{}", "true", "\"\\u0000\"", "1e999999", "-0", "\"\""];
                    string json = Encoding.UTF8.GetString(text.ToArray());
                    string[] keys = ["\"remove\"", "\"" + A + "\"", "[\"no-such"];
                    string key = keys[random.Next(keys.Length)];
                    int k = json.IndexOf(key, StringComparison.Ordinal);
                    if (k >= 0)
                        json = json[..k] + values[random.Next(values.Length)] + json[(k + key.Length)..];
                    text = [.. Encoding.UTF8.GetBytes(json)];
                    break;
                case 6: // wrapped
                    text = [.. Encoding.UTF8.GetBytes(random.Next(2) == 0 ? "[" : "{\"message\":"), .. text, .. Encoding.UTF8.GetBytes(random.Next(2) == 0 ? "]" : "}")];
                    break;
                case 7: // unicode, escaped surrogate halves and control characters inside strings
                    string[] odd = ["\\ud800", "\\udfff", "\u2028", "\u0085", "\\u0000", "é", "🙂", "\\n", "\u200b"];
                    string json7 = Encoding.UTF8.GetString(text.ToArray());
                    int q = json7.IndexOf('"', Math.Min(at, json7.Length));
                    if (q >= 0)
                        json7 = json7[..(q + 1)] + odd[random.Next(odd.Length)] + json7[(q + 1)..];
                    text = [.. Encoding.UTF8.GetBytes(json7)];
                    break;
                case 8: // deep nesting
                    int depth = random.Next(1, 300);
                    text.InsertRange(at, Encoding.UTF8.GetBytes(new string('[', depth) + new string(']', depth)));
                    break;
                default: // a property twice, the second with another value
                    string json9 = Encoding.UTF8.GetString(text.ToArray());
                    int brace = json9.IndexOf('{', StringComparison.Ordinal);
                    if (brace >= 0)
                        json9 = json9[..(brace + 1)] + "\"requestId\":\"dup-" + random.Next(1000) + "\"," + json9[(brace + 1)..];
                    text = [.. Encoding.UTF8.GetBytes(json9)];
                    break;
            }
        }
        return [.. text];
    }

    private static string CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (var file in Directory.GetFiles(from))
            File.Copy(file, Path.Combine(to, Path.GetFileName(file)), overwrite: true);
        return to;
    }

    private static void Truncate(string file, int length)
    {
        using var stream = new FileStream(file, FileMode.Open, FileAccess.Write);
        stream.SetLength(length);
    }

    /// <summary>Sets the first float of row <paramref name="row"/> of a shard's F32 <c>gradients</c> to NaN.</summary>
    private static void PutNaN(string safetensors, int row = 0, int p = 0)
    {
        var bytes = File.ReadAllBytes(safetensors);
        long headerLength = BitConverter.ToInt64(bytes, 0);
        var header = JsonNode.Parse(bytes.AsSpan(8, (int)headerLength))!.AsObject();
        long begin = (long)header["gradients"]!["data_offsets"]![0]! + 4L * row * p;
        BitConverter.GetBytes(float.NaN).CopyTo(bytes, 8 + headerLength + begin);
        File.WriteAllBytes(safetensors, bytes);
    }

    /// <summary>Rewrites the header so that the last tensor's data_offsets end claims 4 KB more than the file holds (or,
    /// when the longer number does not fit into the header's length, one element less than its shape needs).</summary>
    private static void LieAboutDataOffsets(string safetensors)
    {
        var bytes = File.ReadAllBytes(safetensors);
        int headerLength = (int)BitConverter.ToInt64(bytes, 0);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(bytes, 8, headerLength).TrimEnd())!.AsObject();
        var last = header.Where(p => p.Key != "__metadata__").MaxBy(p => (long)p.Value!["data_offsets"]![1]!);
        long end = (long)last.Value!["data_offsets"]![1]!;
        last.Value!["data_offsets"]![1] = end + 4096;
        byte[] json = Encoding.UTF8.GetBytes(header.ToJsonString());
        if (json.Length > headerLength)
        {
            // No room for more digits: lie the other way (one element less than the shape needs).
            last.Value!["data_offsets"]![1] = end - 4;
            json = Encoding.UTF8.GetBytes(header.ToJsonString());
        }
        Assert.True(json.Length <= headerLength, "the lying header does not fit");
        var padded = Enumerable.Repeat((byte)' ', headerLength).ToArray();
        json.CopyTo(padded, 0);
        padded.CopyTo(bytes, 8);
        File.WriteAllBytes(safetensors, bytes);
    }

    /// <summary>Waits for one answer per case (two for <see cref="Expect.FailureAndSkipped"/>), then a little longer, and
    /// matches every failure event and dead letter to its case.</summary>
    private static async Task<List<(Hostile Case, string Outcome, bool AsExpected)>> CollectOutcomesAsync(WorkerTestBed bed, BrokerClient broker, List<Hostile> cases)
    {
        int expectedErrors = cases.Count(c => c.Expect == Expect.ErrorQueue);
        int expectedSkipped = cases.Count(c => c.Expect is Expect.Skipped or Expect.FailureAndSkipped);
        var expectedFailures = cases.Where(c => c.Expect is Expect.Failure or Expect.FailureAndSkipped).ToList();
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < TimeSpan.FromSeconds(90))
        {
            var failed = broker.Failed;
            bool failuresIn = expectedFailures.All(c => failed.Any(f => f.RequestId == c.RequestId && f.AdapterId == c.AdapterId));
            if (failuresIn && (await bed.VirtualHost.MessageCountAsync(ErrorQueue) ?? 0) >= expectedErrors
                           && (await bed.VirtualHost.MessageCountAsync(SkippedQueue) ?? 0) >= expectedSkipped)
                break;
            await Task.Delay(250);
        }
        await Task.Delay(2000); // anything more would be a second answer
        var letters = (await DeadLetter.TakeAllAsync(bed.VirtualHost, ErrorQueue)).Concat(await DeadLetter.TakeAllAsync(bed.VirtualHost, SkippedQueue)).ToList();
        var failures = broker.Failed;
        var result = new List<(Hostile, string, bool)>();
        foreach (var c in cases)
        {
            string text = Encoding.UTF8.GetString(c.Body);
            var myLetters = letters.Where(l => l.Body == text).ToList();
            var myFailures = c.Expect is Expect.Failure or Expect.FailureAndSkipped
                ? failures.Where(f => f.RequestId == c.RequestId && f.AdapterId == c.AdapterId).ToList()
                : [];
            var parts = myFailures.Select(f => $"failure {f.Code}: {Cut(f.Message, 110)}")
                .Concat(myLetters.Select(l => $"dead letter in {l.Queue[(l.Queue.LastIndexOf('_') + 1)..]}: {Cut(l.FaultMessage.Length > 0 ? "MT-Fault-Message " + l.FaultMessage : "MT-Reason " + l.Reason, 110)}"))
                .ToList();
            bool ok = c.Expect switch
            {
                Expect.Failure => myLetters.Count == 0 && myFailures.Count == 1 && myFailures[0].Code == c.Code,
                Expect.ErrorQueue => myFailures.Count == 0 && myLetters.Count == 1 && myLetters[0].Queue == ErrorQueue && myLetters[0].FaultMessage.Length > 0,
                Expect.Skipped => myFailures.Count == 0 && myLetters.Count == 1 && myLetters[0].Queue == SkippedQueue && myLetters[0].Reason.Contains(c.Reason, StringComparison.Ordinal),
                Expect.FailureAndSkipped => myFailures.Count == 1 && myFailures[0].Code == c.Code && myLetters.Count == 1 && myLetters[0].Queue == SkippedQueue
                                            && myLetters[0].Reason.Contains(c.Reason, StringComparison.Ordinal),
                _ => false,
            };
            result.Add((c, parts.Count == 0 ? "nothing" : string.Join("; ", parts).Replace("|", "\\|", StringComparison.Ordinal), ok));
        }
        // Nothing else arrived: every dead letter belongs to a case.
        int matchedLetters = cases.Sum(c => letters.Count(l => l.Body == Encoding.UTF8.GetString(c.Body)));
        Assert.True(matchedLetters == letters.Count, $"{letters.Count - matchedLetters} dead letter(s) match no case");
        return result;
    }

    private static string Cut(string s, int max) => s.Length <= max ? s : s[..max] + "…";

    /// <summary>Blob names come only from validated ids: nothing outside the registered adapters' prefixes.</summary>
    private static async Task AssertBlobsOnlyUnderAsync(WorkerTestBed bed, params string[] adapters)
    {
        var names = new List<string>();
        await foreach (var blob in bed.Container.Client.GetBlobsAsync())
            names.Add(blob.Name);
        var outside = names.Where(n => !adapters.Any(a => n.StartsWith(BlobLayout.Adapter(a), StringComparison.Ordinal))).ToList();
        Assert.True(outside.Count == 0, "blobs outside the registered adapters: " + string.Join(", ", outside));
    }
}
