using EraserWorker.Storage;
using EraserWorker.Cli.Tests;
using EraserWorker.Tests.Infrastructure;

namespace EraserWorker.Tests.Storage;

/// <summary>An adapter registered with its base model: <c>adapters/&lt;id&gt;/model/</c>, listed in the base manifest with
/// SHA-256, downloaded verified (folder store).</summary>
public sealed class ModelRegistrationStoreTests : IDisposable
{
    private readonly TempDirectory _temp = new("eraser-model-store");

    public void Dispose() => _temp.Dispose();

    private (string Adapter, string Cache, string Model) Inputs()
    {
        string adapter = _temp.Sub("adapter"), cache = Path.Combine(_temp.Path, "cache"), model = _temp.Sub("model");
        CliFixtures.WriteAdapter(adapter, seed: 1);
        CliFixtures.WriteCache(cache, CliFixtures.Parameters(), CliFixtures.Ids(4), seed: 2);
        File.WriteAllText(Path.Combine(model, "config.json"), """{"model_type":"llama"}""");
        File.WriteAllBytes(Path.Combine(model, "model.safetensors"), [1, 2, 3, 4, 5]);
        File.WriteAllText(Path.Combine(model, "tokenizer.json"), "{}");
        return (adapter, cache, model);
    }

    [Fact]
    public async Task The_model_is_stored_beside_the_base_listed_in_its_manifest_and_downloaded_verified()
    {
        string root = _temp.Sub("store");
        var store = new AdapterStore(new FileSystemBlobStore(root));
        var (adapter, cache, model) = Inputs();
        await store.RegisterAsync("t/with", adapter, cache, model);
        await store.RegisterAsync("t/without", adapter, cache);

        var files = await store.GetModelFilesAsync("t/with");
        Assert.NotNull(files);
        Assert.Equal(["config.json", "model.safetensors", "tokenizer.json"], files.Keys.Order(StringComparer.Ordinal));
        Assert.Null(await store.GetModelFilesAsync("t/without"));
        Assert.False(await store.DownloadModelAsync("t/without", Path.Combine(_temp.Path, "none")));
        Assert.False(Directory.Exists(Path.Combine(_temp.Path, "none")));
        await Assert.ThrowsAsync<AdapterNotFoundException>(() => store.GetModelFilesAsync("t/ghost"));

        string copy = Path.Combine(_temp.Path, "copy");
        Assert.True(await store.DownloadModelAsync("t/with", copy));
        foreach (var f in files.Keys)
            Assert.Equal(File.ReadAllBytes(Path.Combine(model, f)), File.ReadAllBytes(Path.Combine(copy, f)));

        // A changed blob is refused.
        File.WriteAllBytes(Path.Combine(root, "adapters", "t", "with", "model", "model.safetensors"), [9, 9]);
        await Assert.ThrowsAsync<InvalidDataException>(() => store.DownloadModelAsync("t/with", Path.Combine(_temp.Path, "tampered")));
        Assert.False(File.Exists(Path.Combine(_temp.Path, "tampered", "model.safetensors")));
    }

    [Fact]
    public async Task A_model_folder_needs_config_json_and_model_is_a_reserved_segment()
    {
        var store = new AdapterStore(new FileSystemBlobStore(_temp.Sub("store")));
        var (adapter, cache, model) = Inputs();
        File.Delete(Path.Combine(model, "config.json"));
        await Assert.ThrowsAsync<ArgumentException>(() => store.RegisterAsync("t/bad", adapter, cache, model));
        Assert.False(await store.IsRegisteredAsync("t/bad"));
        Assert.Contains("model", AdapterStore.ReservedSegments);
        Assert.False(AdapterStore.IsStorableAdapterId("t/model"));
        Assert.True(AdapterStore.IsStorableAdapterId("model/t"));
    }
}
