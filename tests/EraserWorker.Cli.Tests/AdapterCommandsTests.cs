using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using static EraserWorker.Cli.Tests.CliHarness;

namespace EraserWorker.Cli.Tests;

/// <summary>
/// <c>eraser adapters register | show | download</c> and <c>eraser replacements upload</c> as an operator runs them,
/// against a real store configured with the worker's keys (a settings file passed with <c>--config</c>); run on the
/// folder store and on Azurite.
/// </summary>
[Collection(CliCollection.Name)]
public abstract class AdapterCommandsTests : IAsyncLifetime, IDisposable
{
    protected const string AdapterId = "tenant-a/support-bot";
    protected readonly TempDirectory Temp = new("eraser-cli");

    /// <summary>The <c>Eraser:Storage</c> section of this test's store (created on first call).</summary>
    protected abstract JsonObject StorageSection();

    public virtual Task InitializeAsync() => Task.CompletedTask;

    public virtual Task DisposeAsync() => Task.CompletedTask;

    public void Dispose() => Temp.Dispose();

    private string? _settings;

    private string Settings => _settings ??= WriteSettings(Temp.Path, new JsonObject { ["Storage"] = StorageSection() });

    /// <summary>The same store, opened directly, to look at what the CLI wrote.</summary>
    private AdapterStore Store()
    {
        var options = StorageSection().Deserialize<StorageOptions>(new JsonSerializerOptions(JsonSerializerDefaults.Web)
        {
            Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter() },
        })!;
        return new AdapterStore(StorageServiceCollectionExtensions.CreateBlobStore(options), options);
    }

    private async Task<List<string>> BlobsAsync(string prefix = "")
    {
        var names = new List<string>();
        await foreach (var name in Store().Blobs.ListAsync(prefix))
            names.Add(name);
        return names;
    }

    private (string Adapter, string Cache) MakeInputs(int samples = 10)
    {
        string adapter = Temp.Sub("adapter"), cache = Path.Combine(Temp.Path, "cache");
        CliFixtures.WriteAdapter(adapter, seed: 1);
        CliFixtures.WriteCache(cache, CliFixtures.Parameters(), CliFixtures.Ids(samples), seed: 2);
        return (adapter, cache);
    }

    private static string Sha(string path) => Convert.ToHexStringLower(SHA256.HashData(File.ReadAllBytes(path)));

    private static void AssertSameFiles(string expectedDir, string actualDir, params string[] files)
    {
        foreach (var f in files)
            Assert.Equal(File.ReadAllBytes(Path.Combine(expectedDir, f)), File.ReadAllBytes(Path.Combine(actualDir, f)));
    }

    private CliResult Register(string adapter, string cache, string id = AdapterId, params string[] more) =>
        Run(["adapters", "register", "--id", id, "--adapter", adapter, "--cache", cache, "--config", Settings, .. more]);

    // ------------------------------------------------------------------------------------------ round trips

    [ServiceFact]
    public async Task Register_show_download_and_upload_replacements_round_trip()
    {
        var (adapter, cache) = MakeInputs();
        File.WriteAllText(Path.Combine(adapter, "README.md"), "model card, not part of the adapter");
        string model = Path.Combine(adapter, "adapter_model.safetensors");

        var register = Register(adapter, cache);
        Assert.True(register.Exit == 0, register.ToString());
        var lines = register.Out.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal($"Registered {AdapterId} version 0", lines[0]);
        Assert.Equal($"  sha256  {Sha(model)}", lines[2]);
        string uri = lines[1]["  uri     ".Length..];
        Assert.Equal(Store().VersionUri(AdapterId, 0), uri);
        Assert.Contains("Not uploading 1 other file(s) of the adapter folder: README.md", register.Err);

        // What is stored: exactly the adapter's two files (+ the store's manifest) and exactly the cache's files.
        var version0 = await BlobsAsync(BlobLayout.Version(AdapterId, 0));
        Assert.Equal(["adapter_config.json", "adapter_model.safetensors", "manifest.json"],
            version0.Select(n => n[BlobLayout.Version(AdapterId, 0).Length..]).Order(StringComparer.Ordinal));
        var cacheBlobs = (await BlobsAsync(BlobLayout.Cache(AdapterId))).Select(n => n[BlobLayout.Cache(AdapterId).Length..]).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(Directory.GetFiles(cache).Select(f => Path.GetFileName(f)!).Order(StringComparer.Ordinal), cacheBlobs);

        var show = Run("adapters", "show", "--id", AdapterId, "--json", "--config", Settings);
        Assert.True(show.Exit == 0, show.ToString());
        var info = JsonNode.Parse(show.Out)!.AsObject();
        Assert.Equal(AdapterId, (string?)info["adapterId"]);
        Assert.Equal(0, (int)info["version"]!);
        Assert.Equal(Sha(model), (string?)info["sha256"]);
        Assert.Equal(uri, (string?)info["uri"]);
        Assert.Equal([0], info["versions"]!.AsArray().Select(v => (int)v!));
        Assert.Equal(0, (int)info["manifest"]!["appliedRequests"]!);
        Assert.Equal(0, (int)info["manifest"]!["removed"]!);
        Assert.Equal(0, (int)info["manifest"]!["replaced"]!);
        Assert.Null(info["manifest"]!["solver"]);
        Assert.Equal(2 * 5 + 3 * 2, (long)info["cache"]!["parameters"]!);
        Assert.Single(show.Out.TrimEnd().Split('\n'));

        var text = Run("adapters", "show", "--id", AdapterId, "--config", Settings);
        Assert.True(text.Exit == 0, text.ToString());
        Assert.Contains("head       version 0, updated ", text.Out);
        Assert.Contains("edits      0 removed, 0 replaced", text.Out);

        string downloaded = Path.Combine(Temp.Path, "downloaded");
        var download = Run("adapters", "download", "--id", AdapterId, "--out", downloaded, "--config", Settings);
        Assert.True(download.Exit == 0, download.ToString());
        AssertSameFiles(adapter, downloaded, "adapter_config.json", "adapter_model.safetensors");
        Assert.Equal(["adapter_config.json", "adapter_model.safetensors", "manifest.json"],
            Directory.GetFiles(downloaded).Select(f => Path.GetFileName(f)!).Order(StringComparer.Ordinal));
        Assert.Contains("Verified the SHA-256 of 2 file(s)", download.Err);
        Assert.Contains($"  sha256  {Sha(model)}", download.Out);

        // An existing, non-empty output folder is refused before anything is downloaded.
        var again = Run("adapters", "download", "--id", AdapterId, "--out", downloaded, "--config", Settings);
        Assert.Equal(1, again.Exit);
        Assert.Contains("exists and is not empty", again.FailureLine);

        // Replacement set: same parameters as the registered cache; stdout is only the URI.
        string set = Path.Combine(Temp.Path, "set");
        CliFixtures.WriteCache(set, CliFixtures.Parameters(), ["s001", "s004"], seed: 3, rowsPerShard: 1);
        File.WriteAllText(Path.Combine(set, "notes.txt"), "not part of the set");
        var upload = Run("replacements", "upload", "--id", AdapterId, "--cache", set, "--config", Settings);
        Assert.True(upload.Exit == 0, upload.ToString());
        string replacementsUri = upload.Out.TrimEnd('\n');
        Assert.DoesNotContain('\n', replacementsUri);
        Assert.Equal(replacementsUri + "\n", upload.Out.Replace("\r\n", "\n"));
        Assert.True(RequestValidation.TryParseReplacementsUri(replacementsUri, out string uriAdapter, out string name), replacementsUri);
        Assert.Equal(AdapterId, uriAdapter);
        Assert.Matches("^r-[0-9]{8}t[0-9]{6}z-[0-9a-f]{8}$", name);
        Assert.Empty(RequestValidation.Validate(new UnlearningRequested("r1", AdapterId, UnlearningTasks.CorrectResponse, ["s001"], replacementsUri), 10));

        string back = Path.Combine(Temp.Path, "set-back");
        await Store().DownloadReplacementsAsync(AdapterId, replacementsUri, back);
        var setFiles = Directory.GetFiles(set).Select(f => Path.GetFileName(f)!).Where(f => f != "notes.txt").Order(StringComparer.Ordinal).ToArray();
        Assert.Equal(setFiles, Directory.GetFiles(back).Select(f => Path.GetFileName(f)!).Order(StringComparer.Ordinal));
        AssertSameFiles(set, back, setFiles);
    }

    [ServiceFact]
    public async Task Show_summarises_a_worker_version_and_download_verifies_every_version()
    {
        var (adapter, cache) = MakeInputs();
        var register = Register(adapter, cache, AdapterId, "--json");
        Assert.True(register.Exit == 0, register.ToString());
        var registered = JsonNode.Parse(register.Out)!;
        Assert.Equal(0, (int)registered["version"]!);
        Assert.Equal(10, (int)registered["samples"]!);

        // Version 1 as the worker writes it: new weights, a manifest with history, edits, solver and digests.
        string v1 = Temp.Sub("v1");
        File.Copy(Path.Combine(adapter, "adapter_config.json"), Path.Combine(v1, "adapter_config.json"));
        CliFixtures.WriteAdapter(Temp.Sub("v1-source"), seed: 9);
        File.Copy(Path.Combine(Temp.Path, "v1-source", "adapter_model.safetensors"), Path.Combine(v1, "adapter_model.safetensors"));
        string sha1 = Sha(Path.Combine(v1, "adapter_model.safetensors"));
        var manifest = new JsonObject
        {
            ["format"] = "eraser.manifest/v1",
            ["adapterId"] = AdapterId,
            ["version"] = 1,
            ["parentVersion"] = 0,
            ["createdAt"] = "2026-01-02T03:04:05+00:00",
            ["requests"] = new JsonArray(new JsonObject { ["requestId"] = "a" }, new JsonObject { ["requestId"] = "b" }),
            ["requestHistory"] = new JsonObject { ["a"] = 1, ["b"] = 1 },
            ["edits"] = new JsonObject
            {
                ["removed"] = new JsonArray("s001", "s002", "s003"),
                ["replaced"] = new JsonObject { ["s004"] = $"eraser:adapters/{AdapterId}/replacements/r-x" },
            },
            ["solver"] = new JsonObject { ["name"] = "direct", ["iterations"] = 1, ["seconds"] = 0.01, ["relativeResidual"] = 1e-12, ["damping"] = 0.0 },
            ["files"] = new JsonObject
            {
                ["adapter_config.json"] = new JsonObject { ["sha256"] = Sha(Path.Combine(v1, "adapter_config.json")) },
                ["adapter_model.safetensors"] = new JsonObject { ["sha256"] = sha1 },
            },
        };
        File.WriteAllText(Path.Combine(v1, "manifest.json"), manifest.ToJsonString());
        var store = Store();
        await store.WriteVersionAsync(AdapterId, 1, v1);
        Assert.True(await store.TryAdvanceHeadAsync(AdapterId, 1, (await store.GetHeadAsync(AdapterId))!.ETag));

        var show = Run("adapters", "show", "--id", AdapterId, "--json", "--config", Settings);
        Assert.True(show.Exit == 0, show.ToString());
        var info = JsonNode.Parse(show.Out)!;
        Assert.Equal(1, (int)info["version"]!);
        Assert.Equal(sha1, (string?)info["sha256"]);
        Assert.Equal([0, 1], info["versions"]!.AsArray().Select(v => (int)v!));
        Assert.Equal(0, (int)info["manifest"]!["parentVersion"]!);
        Assert.Equal(2, (int)info["manifest"]!["appliedRequests"]!);
        Assert.Equal(3, (int)info["manifest"]!["removed"]!);
        Assert.Equal(1, (int)info["manifest"]!["replaced"]!);
        Assert.Equal("direct", (string?)info["manifest"]!["solver"]!["name"]);

        var text = Run("adapters", "show", "--id", AdapterId, "--config", Settings);
        Assert.Contains("versions   0, 1 (2)", text.Out);
        Assert.Contains("requests   2 applied (2 in this version)", text.Out);
        Assert.Contains("edits      3 removed, 1 replaced", text.Out);
        Assert.Contains("solver     direct, 1 iteration(s)", text.Out);

        string head = Path.Combine(Temp.Path, "head");
        var download = Run("adapters", "download", "--id", AdapterId, "--out", head, "--json", "--config", Settings);
        Assert.True(download.Exit == 0, download.ToString());
        Assert.Equal(1, (int)JsonNode.Parse(download.Out)!["version"]!);
        AssertSameFiles(v1, head, "adapter_config.json", "adapter_model.safetensors", "manifest.json");

        string base0 = Temp.Sub("base"); // exists and is empty: allowed
        var download0 = Run("adapters", "download", "--id", AdapterId, "--version", "0", "--out", base0, "--config", Settings);
        Assert.True(download0.Exit == 0, download0.ToString());
        AssertSameFiles(adapter, base0, "adapter_config.json", "adapter_model.safetensors");

        var missing = Run("adapters", "download", "--id", AdapterId, "--version", "7", "--out", Path.Combine(Temp.Path, "v7"), "--config", Settings);
        Assert.Equal(1, missing.Exit);
        Assert.Contains("Version 7", missing.FailureLine);

        // A stored file that no longer matches its manifest: refused, and the output folder does not appear.
        await store.Blobs.UploadAsync(BlobLayout.Version(AdapterId, 1) + "adapter_model.safetensors",
            new MemoryStream(Encoding.UTF8.GetBytes("tampered")), BlobCondition.None);
        string tampered = Path.Combine(Temp.Path, "tampered");
        var bad = Run("adapters", "download", "--id", AdapterId, "--out", tampered, "--config", Settings);
        Assert.Equal(1, bad.Exit);
        Assert.Contains("SHA-256", bad.FailureLine);
        Assert.False(Directory.Exists(tampered));
        Assert.Empty(Directory.GetDirectories(Temp.Path, ".tampered.tmp-*"));
    }

    // ------------------------------------------------------------------------------------------ refusals

    [ServiceFact]
    public async Task Register_refuses_an_adapter_that_does_not_match_its_cache_and_uploads_nothing()
    {
        string cache = Path.Combine(Temp.Path, "cache");
        CliFixtures.WriteCache(cache, CliFixtures.Parameters(), CliFixtures.Ids(6), seed: 2);

        string wider = Temp.Sub("wider");
        CliFixtures.WriteAdapter(wider, seed: 1, inFeatures: 6);
        var shape = Register(wider, cache);
        Assert.Equal(1, shape.Exit);
        Assert.Contains("does not match the gradient cache", shape.FailureLine);
        Assert.Contains("shape", shape.FailureLine);
        Assert.Empty(shape.Out);

        string otherNames = Path.Combine(Temp.Path, "other-cache");
        CliFixtures.WriteCache(otherNames, [new(CliFixtures.NameA, [2, 5]), new("base_model.model.missing.lora_B.weight", [3, 2])], CliFixtures.Ids(6), seed: 2);
        string adapter = Temp.Sub("adapter");
        CliFixtures.WriteAdapter(adapter, seed: 1);
        var missing = Register(adapter, otherNames);
        Assert.Equal(1, missing.Exit);
        Assert.Contains("has no tensor 'base_model.model.missing.lora_B.weight'", missing.FailureLine);

        string broken = Temp.Sub("broken");
        foreach (var f in Directory.GetFiles(cache))
            File.Copy(f, Path.Combine(broken, Path.GetFileName(f)));
        File.WriteAllText(Path.Combine(broken, "shard-00000.ids"), "s000\ns000\ns001\ns002\n");
        var duplicate = Register(adapter, broken);
        Assert.Equal(1, duplicate.Exit);
        Assert.Contains("duplicate sample id 's000'", duplicate.FailureLine);

        // A NaN in the rows (the writer refuses them, so patch the first stored value of the last shard).
        string nan = Temp.Sub("nan");
        foreach (var f in Directory.GetFiles(cache))
            File.Copy(f, Path.Combine(nan, Path.GetFileName(f)));
        string shard = Directory.GetFiles(nan, "shard-*.safetensors").Order(StringComparer.Ordinal).Last();
        using (var stream = new FileStream(shard, FileMode.Open, FileAccess.ReadWrite))
        {
            var length = new byte[8];
            stream.ReadExactly(length);
            stream.Position = 8 + BitConverter.ToInt64(length);
            stream.Write(BitConverter.GetBytes(float.NaN));
        }
        var notFinite = Register(adapter, nan);
        Assert.Equal(1, notFinite.Exit);
        Assert.Contains("s004", notFinite.FailureLine);

        var notAnAdapter = Register(cache, cache);
        Assert.Equal(1, notAnAdapter.Exit);
        Assert.Contains("adapter_config.json is missing", notAnAdapter.FailureLine);

        var badId = Register(adapter, cache, "Tenant-A");
        Assert.Equal(1, badId.Exit);
        Assert.StartsWith("eraser: invalid adapter id 'Tenant-A'", badId.FailureLine);

        Assert.Empty(await BlobsAsync());
    }

    [ServiceFact]
    public async Task Register_twice_and_unknown_adapters_fail_with_one_line()
    {
        var (adapter, cache) = MakeInputs();
        Assert.Equal(0, Register(adapter, cache).Exit);
        var blobs = await BlobsAsync();

        var twice = Register(adapter, cache);
        Assert.Equal(1, twice.Exit);
        Assert.Equal($"eraser: Adapter '{AdapterId}' is already registered.", twice.FailureLine);
        Assert.Equal(blobs, await BlobsAsync());

        foreach (var args in new[]
        {
            new[] { "adapters", "show", "--id", "tenant-a/nobody" },
            ["adapters", "download", "--id", "tenant-a/nobody", "--out", Path.Combine(Temp.Path, "nobody")],
            ["replacements", "upload", "--id", "tenant-a/nobody", "--cache", cache],
        })
        {
            var result = Run([.. args, "--config", Settings]);
            Assert.Equal(1, result.Exit);
            Assert.Equal("eraser: Adapter 'tenant-a/nobody' is not registered.", result.FailureLine);
            Assert.Empty(result.Out);
        }
        Assert.False(Directory.Exists(Path.Combine(Temp.Path, "nobody")));
    }

    [ServiceFact]
    public async Task Replacements_upload_refuses_a_set_with_other_parameters_and_uploads_nothing()
    {
        var (adapter, cache) = MakeInputs();
        Assert.Equal(0, Register(adapter, cache).Exit);

        string otherP = Path.Combine(Temp.Path, "other-p");
        CliFixtures.WriteCache(otherP, CliFixtures.Parameters(rank: 3), ["s001"], seed: 4);
        var pMismatch = Run("replacements", "upload", "--id", AdapterId, "--cache", otherP, "--config", Settings);
        Assert.Equal(1, pMismatch.Exit);
        Assert.Contains("P = 24", pMismatch.FailureLine);
        Assert.Contains("P = 16", pMismatch.FailureLine);
        Assert.Empty(pMismatch.Out);

        string reordered = Path.Combine(Temp.Path, "reordered");
        CliFixtures.WriteCache(reordered, CliFixtures.Parameters().Reverse().ToList(), ["s001"], seed: 4);
        var order = Run("replacements", "upload", "--id", AdapterId, "--cache", reordered, "--config", Settings);
        Assert.Equal(1, order.Exit);
        Assert.Contains("parameter #0", order.FailureLine);

        var notASet = Run("replacements", "upload", "--id", AdapterId, "--cache", adapter, "--config", Settings);
        Assert.Equal(1, notASet.Exit);
        Assert.Contains("cache.json", notASet.FailureLine);

        Assert.Empty(await BlobsAsync(BlobLayout.Adapter(AdapterId) + "replacements/"));
    }
}

/// <summary>On a local folder (the embedded default).</summary>
public sealed class FileSystemAdapterCommandsTests : AdapterCommandsTests
{
    protected override JsonObject StorageSection() => new()
    {
        ["Kind"] = "FileSystem",
        ["Root"] = Path.Combine(Temp.Path, "store"),
    };
}

/// <summary>On Azurite, a fresh container per test.</summary>
public sealed class AzuriteAdapterCommandsTests : AdapterCommandsTests
{
    private AzuriteContainer? _container;

    protected override JsonObject StorageSection()
    {
        _container ??= AzuriteContainer.Create();
        return new JsonObject
        {
            ["Kind"] = "AzureBlob",
            ["ConnectionString"] = _container.ConnectionString,
            ["Container"] = _container.Name,
        };
    }

    public override async Task DisposeAsync()
    {
        if (_container is not null)
            await _container.DisposeAsync();
    }
}
