using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Options;

namespace EraserWorker.Tests.Storage;

public sealed class StorageOptionsTests : IDisposable
{
    private readonly TempDirectory _dir = new("eraser-options");

    public void Dispose() => _dir.Dispose();

    private static ServiceProvider Build(Dictionary<string, string?> settings, Action<IServiceCollection>? more = null)
    {
        var configuration = new ConfigurationBuilder().AddInMemoryCollection(settings).Build();
        var services = new ServiceCollection();
        services.AddLogging();
        more?.Invoke(services);
        services.AddEraserStorage(configuration);
        return services.BuildServiceProvider();
    }

    private static void ValidateOnStart(ServiceProvider sp) => sp.GetRequiredService<IStartupValidator>().Validate();

    [Fact]
    public void Defaults_give_a_folder_store_under_data()
    {
        using var sp = Build([]);
        ValidateOnStart(sp);
        var options = sp.GetRequiredService<IOptions<StorageOptions>>().Value;
        Assert.Equal(StorageKind.FileSystem, options.Kind);
        Assert.Equal("./data", options.Root);
        Assert.Equal("eraser", options.Container);
        var store = Assert.IsType<FileSystemBlobStore>(Assert.IsType<EraserWorker.Storage.Security.CredentialFreeUriBlobStore>(sp.GetRequiredService<IBlobStore>()).Inner);
        Assert.Equal(Path.GetFullPath("./data"), store.Root);
        Assert.NotNull(sp.GetRequiredService<AdapterStore>());
        Assert.IsType<NullStorageMetrics>(sp.GetRequiredService<IStorageMetrics>());
        Assert.Contains(sp.GetServices<IHostedService>(), s => s.GetType().Name == "StorageInitializer");
    }

    [Fact]
    public void Configuration_keys_bind_and_azure_blob_with_a_connection_string_works()
    {
        using var sp = Build(new()
        {
            ["Eraser:Storage:Kind"] = "AzureBlob",
            ["Eraser:Storage:ConnectionString"] = "UseDevelopmentStorage=true",
            ["Eraser:Storage:Container"] = "my-adapters",
            ["Eraser:Storage:WriterId"] = "pod-0",
            ["Eraser:Storage:VersionClaimTimeout"] = "00:05:00",
        });
        ValidateOnStart(sp);
        var store = Assert.IsType<AzureBlobStore>(Assert.IsType<EraserWorker.Storage.Security.CredentialFreeUriBlobStore>(sp.GetRequiredService<IBlobStore>()).Inner);
        Assert.Equal("my-adapters", store.Container.Name);
        Assert.Equal("pod-0", sp.GetRequiredService<AdapterStore>().WriterId);
        Assert.Equal(TimeSpan.FromMinutes(5), sp.GetRequiredService<IOptions<StorageOptions>>().Value.VersionClaimTimeout);
    }

    [Fact]
    public void A_service_uri_selects_token_credentials()
    {
        using var sp = Build(new()
        {
            ["Eraser:Storage:Kind"] = "AzureBlob",
            ["Eraser:Storage:ServiceUri"] = "https://account.blob.core.windows.net",
        });
        ValidateOnStart(sp);
        var store = Assert.IsType<AzureBlobStore>(Assert.IsType<EraserWorker.Storage.Security.CredentialFreeUriBlobStore>(sp.GetRequiredService<IBlobStore>()).Inner);
        Assert.Equal("https://account.blob.core.windows.net/eraser", store.Container.Uri.AbsoluteUri.TrimEnd('/'));
    }

    [Theory]
    [InlineData("AzureBlob", null, null, "eraser", "exactly one of")]
    [InlineData("AzureBlob", "UseDevelopmentStorage=true", "https://a.blob.core.windows.net", "eraser", "exactly one of")]
    [InlineData("AzureBlob", null, "not a uri", "eraser", "ServiceUri")]
    [InlineData("AzureBlob", "garbage", null, "eraser", "ConnectionString")]
    [InlineData("FileSystem", null, null, "Bad_Container", "Container")]
    [InlineData("FileSystem", null, null, "ab", "Container")]
    [InlineData("Nonsense", null, null, "eraser", "Kind")]
    public void Invalid_settings_fail_at_start_up(string kind, string? connection, string? serviceUri, string container, string expected)
    {
        using var sp = Build(new()
        {
            ["Eraser:Storage:Kind"] = kind,
            ["Eraser:Storage:ConnectionString"] = connection,
            ["Eraser:Storage:ServiceUri"] = serviceUri,
            ["Eraser:Storage:Container"] = container,
        });
        var e = Assert.ThrowsAny<Exception>(() => ValidateOnStart(sp));
        Assert.Contains(expected, e is AggregateException a ? string.Join(" | ", a.InnerExceptions.Select(x => x.Message)) : e.Message);
    }

    [Fact]
    public void An_empty_root_fails_for_the_folder_store()
    {
        using var sp = Build(new() { ["Eraser:Storage:Root"] = " " });
        var e = Assert.Throws<OptionsValidationException>(() => sp.GetRequiredService<IOptions<StorageOptions>>().Value);
        Assert.Contains("Root", e.Message);
    }

    [Fact]
    public async Task A_metrics_callback_registered_by_the_host_is_used()
    {
        var metrics = new CountingMetrics();
        using var sp = Build(new() { ["Eraser:Storage:Root"] = _dir.Path }, s => s.AddSingleton<IStorageMetrics>(metrics));
        var store = sp.GetRequiredService<IBlobStore>();
        await store.UploadAsync("m/x", new MemoryStream(new byte[10]), BlobCondition.None);
        Assert.Equal(10, metrics.Bytes);
    }

    private sealed class CountingMetrics : IStorageMetrics
    {
        public long Bytes;

        public void BytesTransferred(string direction, long bytes) => Interlocked.Add(ref Bytes, bytes);
    }
}
