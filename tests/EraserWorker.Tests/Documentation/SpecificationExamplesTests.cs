using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using EraserWorker.Components;
using EraserWorker.Core.Compute;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Hosting;
using EraserWorker.Models;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using EraserWorker.TestSupport;
using Json.Schema;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace EraserWorker.Tests.Documentation;

/// <summary>
/// Every worked example of <c>docs/spec.md</c> (a fenced block whose info string is <c>&lt;language&gt; example:&lt;name&gt;</c>)
/// is read from the document and checked against the code that reads or writes that format or message: deserialised and
/// validated, checked against its JSON Schema, written again by the producing code and compared, or put into a real store
/// and read back through the store's own code. A change of a format or contract that the document does not follow fails
/// here, and so does a document example that the code would refuse.
/// </summary>
public sealed partial class SpecificationExamplesTests : IDisposable
{
    private readonly TempDirectory _temp = new("eraser-spec-examples");

    public void Dispose() => _temp.Dispose();

    /// <summary>Every example the document must carry (one per message and file format).</summary>
    public static readonly string[] Required =
    [
        "adapter-config", "cache-json", "cache-shard-header", "cache-ids", "training-line",
        "unlearning-requested", "unlearning-requested-text", "unlearning-completed", "unlearning-failed", "adapter-version-published",
        "head-json", "manifest-base", "manifest-update", "request-marker", "appsettings",
    ];

    [GeneratedRegex(@"^```(?<language>\w+) example:(?<name>[\w-]+)\n(?<body>.*?)^```", RegexOptions.Multiline | RegexOptions.Singleline)]
    private static partial Regex ExampleBlock();

    private static readonly Lazy<Dictionary<string, string>> Examples = new(() =>
    {
        string path = Path.Combine(RepositoryRoot(), "docs", "spec.md");
        Assert.True(File.Exists(path), $"{path} is missing");
        var found = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (Match m in ExampleBlock().Matches(File.ReadAllText(path).ReplaceLineEndings("\n")))
            Assert.True(found.TryAdd(m.Groups["name"].Value, m.Groups["body"].Value), $"example:{m.Groups["name"].Value} appears twice");
        return found;
    });

    private static string Example(string name) =>
        Examples.Value.TryGetValue(name, out var body) ? body : throw new Xunit.Sdk.XunitException($"docs/spec.md has no block 'example:{name}'");

    private static JsonNode Json(string name) => JsonNode.Parse(Example(name)) ?? throw new Xunit.Sdk.XunitException($"example:{name} is JSON null");

    [Fact]
    public void The_specification_carries_every_worked_example_and_no_unchecked_one()
    {
        Assert.Empty(Required.Except(Examples.Value.Keys));
        Assert.Empty(Examples.Value.Keys.Except(Required));
    }

    // ------------------------------------------------------------------------------------------ §3 messages

    [Theory]
    [InlineData("unlearning-requested")]
    [InlineData("unlearning-requested-text")]
    public void The_request_examples_are_valid_requests_by_the_schema_and_by_the_workers_validation(string name)
    {
        var request = ContractJson.Deserialize<UnlearningRequested>(Example(name));
        Assert.Empty(RequestValidation.Validate(request, 10_000, RequestValidation.DefaultMaxReplacementTextLength));
        AssertSchemaAccepts("unlearning-requested.schema.json", Json(name));
        AssertSameJson(Json(name), JsonNode.Parse(ContractJson.Serialize(request))!, name);
    }

    [Fact]
    public void The_event_examples_are_what_the_contracts_serialise_and_their_schemas_accept()
    {
        AssertEvent<UnlearningCompleted>("unlearning-completed", "unlearning-completed.schema.json");
        AssertEvent<UnlearningFailed>("unlearning-failed", "unlearning-failed.schema.json");
        AssertEvent<AdapterVersionPublished>("adapter-version-published", "adapter-version-published.schema.json");
        Assert.Contains(ContractJson.Deserialize<UnlearningFailed>(Example("unlearning-failed")).Code, FailureCodes.All);
    }

    private static void AssertEvent<T>(string name, string schema)
    {
        var message = ContractJson.Deserialize<T>(Example(name));
        AssertSchemaAccepts(schema, Json(name));
        AssertSameJson(Json(name), JsonNode.Parse(ContractJson.Serialize(message))!, name);
    }

    // ------------------------------------------------------------------------------------------ §2 files

    [Fact]
    public void The_cache_examples_are_exactly_what_the_cache_writer_writes_for_their_samples()
    {
        var example = GradientCacheManifest.Parse(Encoding.UTF8.GetBytes(Example("cache-json")));
        string[] ids = Example("cache-ids").Split('\n', StringSplitOptions.RemoveEmptyEntries);
        var extra = example.Extra;
        string dir = _temp.Sub("written-cache");
        using (var writer = GradientCacheWriter.Create(dir, example.Parameters, example.L2, "F16", withCurvature: true, rowsPerShard: 16, extra))
        {
            var row = new double[example.ParameterCount];
            foreach (var id in ids)
                writer.Append(id, row, row);
            writer.Complete();
        }

        AssertSameJson(Json("cache-json"), JsonNode.Parse(File.ReadAllBytes(Path.Combine(dir, "cache.json")))!, "cache-json");
        Assert.Equal(Example("cache-ids"), File.ReadAllText(Path.Combine(dir, "shard-00000.ids")));
        var shard = File.ReadAllBytes(Path.Combine(dir, "shard-00000.safetensors"));
        long headerLength = (long)BinaryPrimitives.ReadUInt64LittleEndian(shard);
        var header = JsonNode.Parse(Encoding.UTF8.GetString(shard, 8, (int)headerLength).TrimEnd(' '))!;
        AssertSameJson(Json("cache-shard-header"), header, "cache-shard-header");
        using var opened = GradientCache.Open(dir);
        Assert.Equal(ids, opened.Ids);
        Assert.True(opened.HasCurvature);
    }

    [Fact]
    public void The_adapter_config_example_is_a_lora_configuration_the_runtime_reads()
    {
        var config = LoraConfig.Parse(Example("adapter-config"));
        Assert.Equal((8, 16.0), (config.R, config.LoraAlpha));
        Assert.Equal(["q_proj", "v_proj"], config.TargetModules);
    }

    [Fact]
    public void The_training_line_example_parses_into_a_sample_with_the_models_tokenizer()
    {
        string modelDir = _temp.Sub("model");
        var config = RandomLlama.Tiny(vocab: 302) with { BosTokenId = 300, EosTokenId = 301 };
        RandomLlama.WriteModel(modelDir, config, seed: 1);
        TinyByteLevelTokenizer.Write(Path.Combine(modelDir, "tokenizer.json"));
        var tokenizer = ModelTokenizer.TryLoad(modelDir, config)!;

        var sample = TrainingData.ParseLine(Example("training-line").Trim(), "example:training-line", config.VocabSize, tokenizer);

        Assert.Equal("s017", sample.Id);
        Assert.Equal(300, sample.PromptIds[0]); // [BOS] + prompt
        Assert.Equal(301, sample.ResponseIds[^1]); // response + [EOS]
    }

    // ------------------------------------------------------------------------------------------ §4 storage

    [Fact]
    public async Task The_storage_examples_are_read_by_the_stores_own_code()
    {
        // The examples put where the store keeps them, read back through AdapterStore.
        var blobs = new FileSystemBlobStore(_temp.Sub("store"));
        var store = new AdapterStore(blobs);
        var update = AdapterManifest.Parse(Encoding.UTF8.GetBytes(Example("manifest-update")), "tenant-a/support-bot", 7);
        string id = update.AdapterId;
        await Put(blobs, BlobLayout.Head(id), Example("head-json"));
        await Put(blobs, BlobLayout.Manifest(id, 0), Example("manifest-base"));
        await Put(blobs, BlobLayout.Manifest(id, 7), Example("manifest-update"));
        await Put(blobs, BlobLayout.RequestMarker(id, "gdpr-2026-0042"), Example("request-marker"));

        var head = await store.GetHeadAsync(id);
        Assert.Equal(7, head!.Version);
        var stored = (await store.ReadManifestAsync(id, 7))!;
        Assert.Equal((AdapterManifest.UpdateKind, 6), (stored.Kind, stored.ParentVersion));
        Assert.Equal(3, stored.Edits.Removed.Count);
        Assert.Equal("direct", stored.Solver!.Name);
        var baseManifest = (await store.ReadManifestAsync(id, 0))!;
        Assert.True(baseManifest.IsBase);
        Assert.Equal(3, baseManifest.CacheFiles!.Count);
        // The marker answers for a request the head's own manifest does not list.
        var applied = await store.FindAppliedAsync(stored with { Requests = [] }, ["gdpr-2026-0042"]);
        Assert.Equal(7, applied["gdpr-2026-0042"]);
        // What the publisher writes has the examples' shape: written again, a manifest is the example (nulls omitted).
        AssertSameJson(WithoutNulls(Json("manifest-update")), JsonNode.Parse(stored.ToUtf8Json())!, "manifest-update");
        AssertSameJson(WithoutNulls(Json("manifest-base")), JsonNode.Parse(baseManifest.ToUtf8Json())!, "manifest-base");
    }

    // ------------------------------------------------------------------------------------------ §5 configuration

    [Fact]
    public void The_configuration_example_binds_and_passes_the_workers_start_up_validation()
    {
        string file = _temp.Sub("conf") + "/appsettings.json";
        File.WriteAllText(file, Example("appsettings"));
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = _temp.Path, EnvironmentName = "Production" });
        builder.Configuration.AddJsonFile(file);
        builder.AddEraserWorker();
        using var app = builder.Build();

        var worker = app.Services.GetRequiredService<IOptions<WorkerOptions>>().Value;
        var compute = app.Services.GetRequiredService<IOptions<ComputeOptions>>().Value;
        var storage = app.Services.GetRequiredService<IOptions<StorageOptions>>().Value;
        var transport = app.Services.GetRequiredService<IOptions<TransportOptions>>().Value;
        Assert.Equal((1e-6, 2000, 8), (worker.Tolerance, worker.MaxIterations, worker.Retries));
        Assert.Equal((8L << 30, RowResidency.Auto), (compute.MemoryBudgetBytes, compute.Residency));
        Assert.Equal((StorageKind.AzureBlob, false), (storage.Kind, storage.CreateContainer));
        Assert.Equal((TransportKind.RabbitMq, 5671, true), (transport.Kind, transport.Port, transport.UseTls));
    }

    // ------------------------------------------------------------------------------------------ helpers

    private static async Task Put(IBlobStore blobs, string name, string text) =>
        await blobs.UploadAsync(name, new MemoryStream(Encoding.UTF8.GetBytes(text)), BlobCondition.None);

    private static void AssertSchemaAccepts(string schemaFile, JsonNode instance)
    {
        string path = Path.Combine(AppContext.BaseDirectory, "schemas", schemaFile);
        var result = JsonSchema.FromText(File.ReadAllText(path))
            .Evaluate(instance, new EvaluationOptions { OutputFormat = OutputFormat.List, RequireFormatValidation = true });
        Assert.True(result.IsValid, $"{schemaFile} refuses the example: " + string.Join("; ", (result.Details ?? [])
            .Where(d => d.Errors is not null).SelectMany(d => d.Errors!.Select(e => $"{d.InstanceLocation}: {e.Value}"))));
    }

    /// <summary>Same members and values, numbers compared by value, whatever the formatting and member order.</summary>
    private static void AssertSameJson(JsonNode expected, JsonNode actual, string what) =>
        Assert.True(JsonNode.DeepEquals(Canonical(expected), Canonical(actual)),
            $"example:{what} differs from what the code writes:\n  document: {Canonical(expected)!.ToJsonString()}\n  code:     {Canonical(actual)!.ToJsonString()}");

    private static JsonNode? Canonical(JsonNode? node) => node switch
    {
        JsonObject o => new JsonObject(o.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => KeyValuePair.Create(p.Key, Canonical(p.Value)))),
        JsonArray a => new JsonArray(a.Select(Canonical).ToArray()),
        JsonValue v when v.TryGetValue(out double d) => JsonValue.Create(d),
        JsonValue v when v.GetValueKind() == JsonValueKind.String && DateTimeOffset.TryParse(v.GetValue<string>(), System.Globalization.CultureInfo.InvariantCulture,
            System.Globalization.DateTimeStyles.None, out var t) && v.GetValue<string>().Contains('T') => JsonValue.Create(t.UtcTicks),
        _ => node?.DeepClone(),
    };

    private static JsonNode WithoutNulls(JsonNode node) => node switch
    {
        JsonObject o => new JsonObject(o.Where(p => p.Value is not null).Select(p => KeyValuePair.Create(p.Key, (JsonNode?)WithoutNulls(p.Value!)))),
        JsonArray a => new JsonArray(a.Select(n => n is null ? null : WithoutNulls(n)).ToArray()),
        _ => node.DeepClone(),
    };

    private static string RepositoryRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "EraserWorker.sln")))
                return dir.FullName;
        throw new Xunit.Sdk.XunitException("the repository root (EraserWorker.sln) was not found above " + AppContext.BaseDirectory);
    }
}
