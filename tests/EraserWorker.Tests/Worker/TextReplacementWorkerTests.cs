using EraserWorker.Components.Unlearning;
using System.Diagnostics;
using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Hosting;
using EraserWorker.Storage;
using EraserWorker.Cli.Tests;
using EraserWorker.Tests.Infrastructure;
using MassTransit.Testing;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Worker;

/// <summary>
/// Text replacements (<c>replacements: [{id, prompt, response}]</c>) through the worker in process — embedded defaults
/// (folder store), MassTransit's in-memory test harness as the bus — on a tiny random LLaMA registered with its model
/// (<c>eraser adapters register --model</c>). The worker's result is held to the independent path: the replacement set
/// that <c>eraser cache build</c> writes for the same texts, applied by <c>eraser unlearn</c>.
/// </summary>
[Collection(CliCollection.Name)] // registers through the CLI in-process; the machine has two cores
public sealed class TextReplacementWorkerTests(TinyLlamaWorld world, ITestOutputHelper output) : IClassFixture<TinyLlamaWorld>, IDisposable
{
    private const string AdapterId = "tenant-a/tiny-llama";
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);
    private static readonly CancellationToken Snapshot = new(canceled: true);

    private readonly TempDirectory _temp = new("eraser-text-replacements");

    public void Dispose() => _temp.Dispose();

    private string StoreRoot => Path.Combine(_temp.Path, "store");

    private AdapterStore TestStore() => new(new FileSystemBlobStore(StoreRoot), new StorageOptions { WriterId = "tests" });

    private async Task<WebApplication> StartHostAsync()
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = _temp.Path, EnvironmentName = "Production" });
        builder.Configuration.AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["Eraser:Storage:Root"] = StoreRoot,
            ["Eraser:Worker:WorkDirectory"] = _temp.Sub("work-" + Guid.NewGuid().ToString("N")[..8]),
            ["Eraser:Http:Port"] = "0",
            ["Eraser:Worker:BatchTimeLimit"] = "00:00:00.500",
            ["Eraser:Compute:Device"] = "cpu",
        });
        builder.Logging.ClearProviders();
        builder.Logging.AddProvider(new TestOutputLoggerProvider(output));
        builder.AddEraserWorker();
        builder.Services.AddWorkerTestHarness();
        var app = builder.Build();
        app.MapEraserEndpoints();
        await app.StartAsync();
        return app;
    }

    private static async Task<T> WaitAsync<T>(ITestHarness harness, Func<T, bool> filter, string what, int count = 1) where T : class
    {
        var watch = Stopwatch.StartNew();
        while (true)
        {
            var found = harness.Published.Select<T>(Snapshot).Select(m => m.Context.Message).Where(filter).ToList();
            if (found.Count >= count)
                return found[^1];
            if (watch.Elapsed > Timeout)
            {
                var all = harness.Published.Select(_ => true, Snapshot).Select(m => $"{m.MessageType.Name}: {System.Text.Json.JsonSerializer.Serialize(m.MessageObject)}");
                Assert.Fail($"Timed out waiting for {what}.\nPublished so far:\n  {string.Join("\n  ", all)}");
            }
            await Task.Delay(50);
        }
    }

    private static Task<UnlearningCompleted> CompletedAsync(ITestHarness harness, string requestId, int count = 1) =>
        WaitAsync<UnlearningCompleted>(harness, c => c.RequestId == requestId, $"the completion of {requestId}", count);

    private static Task<UnlearningFailed> FailedAsync(ITestHarness harness, string requestId) =>
        WaitAsync<UnlearningFailed>(harness, f => f.RequestId == requestId, $"the failure of {requestId}");

    private static string[] SampleIds(IEnumerable<TextReplacement> texts) => texts.Select(t => t.Id).ToArray();

    [Fact]
    public async Task A_removed_samples_training_text_is_deleted_from_the_store_when_its_removal_is_published()
    {
        string settings = CliHarness.WriteSettings(_temp.Path, new JsonObject { ["Storage"] = new JsonObject { ["Kind"] = "FileSystem", ["Root"] = StoreRoot } });
        // The texts must be exactly the cache's samples: one missing is refused before anything is stored.
        string partial = _temp.Sub("partial") + "/train.jsonl";
        File.WriteAllLines(partial, File.ReadAllLines(world.DataFile).Skip(1));
        var refused = CliHarness.Run("adapters", "register", "--id", AdapterId, "--adapter", world.AdapterDir, "--cache", world.CacheDir,
            "--model", world.ModelDir, "--training-data", partial, "--config", settings);
        Assert.Equal(1, refused.Exit);
        Assert.Contains("must hold exactly the gradient cache's samples (12): missing 's00'", refused.FailureLine);
        Assert.False(await TestStore().IsRegisteredAsync(AdapterId));

        var registered = CliHarness.Run("adapters", "register", "--id", AdapterId, "--adapter", world.AdapterDir, "--cache", world.CacheDir,
            "--model", world.ModelDir, "--training-data", world.DataFile, "--config", settings, "--json");
        Assert.True(registered.Exit == 0, registered.ToString());
        Assert.Equal(12, (int)JsonNode.Parse(registered.Out)!["trainingSamples"]!);
        var baseManifest = (await TestStore().ReadManifestAsync(AdapterId, 0))!;
        Assert.Equal(WorkerTestBed.Sha256OfFile(world.DataFile), Assert.Single(baseManifest.TrainingFiles!).Value.Sha256);

        await using var app = await StartHostAsync();
        var harness = app.Services.GetRequiredService<ITestHarness>();
        await harness.Bus.Publish(new UnlearningRequested("erase-s03", AdapterId, UnlearningTasks.Remove, ["s03", "s07"]));
        var completed = await CompletedAsync(harness, "erase-s03");

        // The version records the purge; the stored texts no longer hold those samples, and nothing else changed.
        var manifest = (await TestStore().ReadManifestAsync(AdapterId, completed.Version))!;
        Assert.Equal(["s03", "s07"], manifest.Purged!.SampleIds);
        string downloaded = _temp.Sub("texts") + "/train.jsonl";
        Assert.True(await TestStore().DownloadTrainingTextsAsync(AdapterId, downloaded));
        Assert.Equal(manifest.Purged.TrainingSha256, WorkerTestBed.Sha256OfFile(downloaded));
        var expected = File.ReadAllLines(world.DataFile).Where(l => !l.Contains("\"s03\"") && !l.Contains("\"s07\"")).ToList();
        Assert.Equal(expected, File.ReadAllLines(downloaded));
        // No copy of the old file is left anywhere under the adapter's training texts.
        var left = Directory.GetFiles(Path.Combine(StoreRoot, BlobLayout.Training(AdapterId)));
        Assert.Equal(2, left.Length); // the index and the current file
        Assert.All(left, f => Assert.DoesNotContain("\"s03\"", File.ReadAllText(f)));

        // Removing the same sample again is a no-op for the texts, and the manifest still says they are gone.
        await harness.Bus.Publish(new UnlearningRequested("erase-s03-again", AdapterId, UnlearningTasks.Remove, ["s03"]));
        var again = await CompletedAsync(harness, "erase-s03-again");
        var second = (await TestStore().ReadManifestAsync(AdapterId, again.Version))!;
        Assert.Equal(["s03"], second.Purged!.SampleIds);
        Assert.Equal(manifest.Purged.TrainingSha256, second.Purged.TrainingSha256);
    }

    [Fact]
    public async Task Text_correction_equals_eraser_unlearn_with_the_set_cache_build_writes_and_is_replayed_after_a_restart()
    {
        // Register through the CLI, as an operator does.
        string settings = CliHarness.WriteSettings(_temp.Path, new JsonObject { ["Storage"] = new JsonObject { ["Kind"] = "FileSystem", ["Root"] = StoreRoot } });
        var registered = CliHarness.Run("adapters", "register", "--id", AdapterId, "--adapter", world.AdapterDir, "--cache", world.CacheDir,
            "--model", world.ModelDir, "--config", settings, "--json");
        Assert.True(registered.Exit == 0, registered.ToString());
        var summary = JsonNode.Parse(registered.Out)!;
        Assert.Equal(["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"],
            summary["model"]!["files"]!.AsArray().Select(f => (string)f!).Order(StringComparer.Ordinal));
        var modelFiles = await TestStore().GetModelFilesAsync(AdapterId);
        Assert.NotNull(modelFiles);
        Assert.DoesNotContain("README.md", modelFiles.Keys);

        TextReplacement[] corrections =
        [
            new("s03", world.Samples[3].Prompt, " blue river stone"),
            new("s07", world.Samples[7].Prompt, " hello world"),
        ];
        var request = new UnlearningRequested("fix-1", AdapterId, UnlearningTasks.CorrectResponse, SampleIds(corrections), Replacements: corrections);
        string expectedSet = RequestValidation.FormatReplacementsUri(AdapterId, TextReplacementSets.SetName(request));
        // The first worker stays up until the end: MassTransit keeps the first bus's logger factory in a static log
        // context, so a bus created after that host is disposed would fail (a second host started while it runs is fine).
        await using var firstWorker = await StartHostAsync();
        {
            var harness = firstWorker.Services.GetRequiredService<ITestHarness>();
            await harness.Bus.Publish(request);
            var first = await CompletedAsync(harness, "fix-1");
            Assert.Equal(1, first.Version);
            await harness.Bus.Publish(request); // redelivered: answered from the history, never recomputed or re-applied
            var again = await CompletedAsync(harness, "fix-1", count: 2);
            Assert.Equal((first.Version, first.Sha256), (again.Version, again.Sha256));
            Assert.Empty(harness.Published.Select<UnlearningFailed>(Snapshot));
        }

        // The version records the stored set like an uploaded one.
        var store = TestStore();
        var manifest = (await store.ReadManifestAsync(AdapterId, 1))!;
        var replaced = manifest.Edits.Replaced;
        Assert.Equal(["s03", "s07"], replaced.Select(p => p.Key).Order(StringComparer.Ordinal));
        Assert.All(replaced, p => Assert.Equal(expectedSet, p.Value));
        Assert.Equal(expectedSet, manifest.Requests[0].ReplacementsUri);

        // Rows: the worker's set against the set `eraser cache build` writes for the same texts.
        string oracleSet = world.BuildReplacementSet(corrections, Path.Combine(_temp.Path, "oracle-set"));
        string storedSet = Path.Combine(_temp.Path, "stored-set");
        await store.DownloadReplacementsAsync(AdapterId, expectedSet, storedSet);
        using (var expected = GradientCache.Open(oracleSet))
        using (var actual = GradientCache.Open(storedSet))
        {
            Assert.Equal(expected.Parameters, actual.Parameters);
            Assert.Equal((expected.L2, expected.StorageDType, expected.HasCurvature), (actual.L2, actual.StorageDType, actual.HasCurvature));
            Assert.Equal(expected.Ids.Order(StringComparer.Ordinal), actual.Ids.Order(StringComparer.Ordinal));
            double worst = 0;
            int identical = 0;
            foreach (var id in expected.Ids)
            {
                expected.TryGetRow(id, out int e);
                actual.TryGetRow(id, out int a);
                foreach (var which in new[] { CacheMatrix.Gradients, CacheMatrix.Curvature })
                {
                    var x = expected.ReadRowDouble(which, e);
                    var y = actual.ReadRowDouble(which, a);
                    double scale = x.Max(Math.Abs);
                    double diff = x.Zip(y, (p, q) => Math.Abs(p - q)).Max();
                    Assert.True(scale > 0, $"{id} {which}: a zero row");
                    worst = Math.Max(worst, diff / scale);
                    identical += x.SequenceEqual(y) ? 1 : 0;
                }
            }
            output.WriteLine($"rows: worst relative difference {worst:E2}; {identical} of {2 * expected.RowCount} rows bit-identical");
            Assert.True(worst <= 1e-6, $"the worker's rows differ from eraser cache build's by {worst:E2} (relative)");
        }

        // Version 1 against eraser unlearn with that set.
        string v1 = Path.Combine(_temp.Path, "v1");
        await store.DownloadVersionAsync(AdapterId, 1, v1);
        double relative = world.AssertSameUpdate(world.Unlearn(Path.Combine(_temp.Path, "oracle-v1"), [], oracleSet), world.Theta(v1), 1e-5, "version 1");
        output.WriteLine($"version 1 vs eraser unlearn: relative difference {relative:E2}");

        // A fresh worker (nothing warm: its own WarmEngines and WarmModels) replays the stored set from the base.
        await using (var app = await StartHostAsync())
        {
            var harness = app.Services.GetRequiredService<ITestHarness>();
            await harness.Bus.Publish(new UnlearningRequested("rm-2", AdapterId, UnlearningTasks.Remove, ["s01"]));
            var second = await CompletedAsync(harness, "rm-2");
            Assert.Equal(2, second.Version);
        }
        string v2 = Path.Combine(_temp.Path, "v2");
        await store.DownloadVersionAsync(AdapterId, 2, v2);
        relative = world.AssertSameUpdate(world.Unlearn(Path.Combine(_temp.Path, "oracle-v2"), ["s01"], oracleSet), world.Theta(v2), 1e-5, "version 2");
        output.WriteLine($"version 2 vs eraser unlearn: relative difference {relative:E2}");
    }

    [Fact]
    public async Task Register_refuses_a_model_that_cannot_reproduce_the_cache_and_uploads_nothing()
    {
        string settings = CliHarness.WriteSettings(_temp.Path, new JsonObject { ["Storage"] = new JsonObject { ["Kind"] = "FileSystem", ["Root"] = StoreRoot } });
        CliResult Register(string id, string adapter, string cache, string model) =>
            CliHarness.Run("adapters", "register", "--id", id, "--adapter", adapter, "--cache", cache, "--model", model, "--config", settings);

        // No tokenizer in the model folder.
        string bare = _temp.Sub("bare-model");
        foreach (var f in new[] { "config.json", "model.safetensors" })
            File.Copy(Path.Combine(world.ModelDir, f), Path.Combine(bare, f));
        Assert.Contains("has no tokenizer", Register("t/a", world.AdapterDir, world.CacheDir, bare).FailureLine);
        // An adapter that is not a LoRA adapter of this model.
        string other = _temp.Sub("other-adapter"), otherCache = Path.Combine(_temp.Path, "other-cache");
        CliFixtures.WriteAdapter(other, seed: 1);
        CliFixtures.WriteCache(otherCache, CliFixtures.Parameters(), CliFixtures.Ids(4), seed: 2);
        Assert.Contains("does not fit the model", Register("t/b", other, otherCache, world.ModelDir).FailureLine);
        // A cache built at another adapter (same layout).
        string moved = _temp.Sub("moved-adapter");
        Models.RandomLlama.WriteAdapter(Path.Combine(moved, "a"), world.Config, world.Lora, seed: 99);
        Assert.Contains("built at another adapter", Register("t/c", Path.Combine(moved, "a"), world.CacheDir, world.ModelDir).FailureLine);

        var store = TestStore();
        foreach (var id in new[] { "t/a", "t/b", "t/c" })
            Assert.False(await store.IsRegisteredAsync(id));
    }

    [Fact]
    public async Task Unusable_text_replacements_fail_alone_with_their_codes_and_write_nothing()
    {
        const string withoutModel = "tenant-a/no-model";
        var store = TestStore();
        await store.RegisterAsync(AdapterId, world.AdapterDir, world.CacheDir, world.ModelDir);
        await store.RegisterAsync(withoutModel, world.AdapterDir, world.CacheDir);
        Assert.Null(await store.GetModelFilesAsync(withoutModel));
        var text = new TextReplacement("s02", world.Samples[2].Prompt, " red cat");
        string someSet = RequestValidation.FormatReplacementsUri(AdapterId, "r-some-set");

        (UnlearningRequested Request, string Code, string Says)[] bad =
        [
            (new("no-model", withoutModel, UnlearningTasks.CorrectResponse, ["s02"], Replacements: [text]), FailureCodes.InvalidRequest, "not registered with its base model"),
            (new("both", AdapterId, UnlearningTasks.CorrectResponse, ["s02"], someSet, [text]), FailureCodes.InvalidRequest, "not both"),
            (new("ids-mismatch", AdapterId, UnlearningTasks.ModifyQuery, ["s01"], Replacements: [text]), FailureCodes.InvalidRequest, "must be exactly the sampleIds"),
            (new("empty-response", AdapterId, UnlearningTasks.CorrectResponse, ["s02"], Replacements: [text with { Response = "" }]), FailureCodes.InvalidRequest, "response must be a non-empty string"),
            (new("remove-with-text", AdapterId, UnlearningTasks.Remove, ["s02"], Replacements: [text]), FailureCodes.InvalidRequest, "must be absent for task 'remove'"),
            (new("out-of-vocabulary", AdapterId, UnlearningTasks.CorrectResponse, ["s02"], Replacements: [text with { Response = " " + TinyLlamaWorld.OutOfVocabularyWord }]),
                FailureCodes.InvalidRequest, "outside the vocabulary"),
            (new("unknown-sample", AdapterId, UnlearningTasks.CorrectResponse, ["s99"], Replacements: [text with { Id = "s99" }]), FailureCodes.UnknownSample, "s99"),
        ];
        await using var app = await StartHostAsync();
        var harness = app.Services.GetRequiredService<ITestHarness>();
        foreach (var (request, _, _) in bad)
            await harness.Bus.Publish(request);
        await harness.Bus.Publish(new UnlearningRequested("good", AdapterId, UnlearningTasks.Remove, ["s05"]));

        foreach (var (request, code, says) in bad)
        {
            var failure = await FailedAsync(harness, request.RequestId);
            Assert.True(code == failure.Code && failure.Message.Contains(says, StringComparison.Ordinal),
                $"{request.RequestId}: expected {code} saying '{says}', got {failure.Code}: {failure.Message}");
        }
        Assert.Equal(1, (await CompletedAsync(harness, "good")).Version);
        var sets = new List<string>();
        foreach (var id in new[] { AdapterId, withoutModel })
            await foreach (var name in store.Blobs.ListAsync(BlobLayout.Adapter(id) + "replacements/"))
                sets.Add(name);
        Assert.Empty(sets);
    }
}
