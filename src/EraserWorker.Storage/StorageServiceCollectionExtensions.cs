using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using EraserWorker.Storage.Blobs;
using EraserWorker.Storage.Security;

namespace EraserWorker.Storage;

/// <summary>Dependency-injection registration of the storage layer.</summary>
public static class StorageServiceCollectionExtensions
{
    /// <summary>
    /// Registers <see cref="StorageOptions"/> (bound from <c>Eraser:Storage</c> of <paramref name="configuration"/>,
    /// validated at start-up — including the transport-security rule of <see cref="BlobEndpointSecurity"/>),
    /// <see cref="IBlobStore"/> (by <see cref="StorageOptions.Kind"/>, credentials kept out of its URIs),
    /// <see cref="AdapterStore"/>, a no-op <see cref="IStorageMetrics"/> unless one is registered (before or
    /// after this call), and a hosted service that creates the container / root folder at start-up.
    /// </summary>
    public static IServiceCollection AddEraserStorage(this IServiceCollection services, IConfiguration configuration)
    {
        ArgumentNullException.ThrowIfNull(services);
        ArgumentNullException.ThrowIfNull(configuration);
        services.AddOptions<StorageOptions>()
            .Bind(configuration.GetSection(StorageOptions.SectionName))
            .ValidateDataAnnotations()
            .ValidateOnStart();
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<StorageOptions>, StorageOptionsValidator>());
        services.TryAddEnumerable(ServiceDescriptor.Singleton<IValidateOptions<StorageOptions>, StorageTlsValidator>());
        services.TryAddSingleton<IStorageMetrics>(NullStorageMetrics.Instance);
        services.TryAddSingleton(TimeProvider.System);
        services.TryAddSingleton<IBlobStore>(sp => CreateBlobStore(
            sp.GetRequiredService<IOptions<StorageOptions>>().Value, sp.GetRequiredService<IStorageMetrics>()));
        services.TryAddSingleton(sp => new AdapterStore(
            sp.GetRequiredService<IBlobStore>(),
            sp.GetRequiredService<IOptions<StorageOptions>>().Value,
            sp.GetService<ILogger<AdapterStore>>(),
            sp.GetService<TimeProvider>()));
        services.AddHostedService<StorageInitializer>();
        return services;
    }

    /// <summary>Creates the <see cref="IBlobStore"/> that <paramref name="options"/> describe — for every caller, the worker
    /// and the CLI alike, wrapped so that its URIs never carry a SAS (<see cref="CredentialFreeUriBlobStore"/>).</summary>
    public static IBlobStore CreateBlobStore(StorageOptions options, IStorageMetrics? metrics = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        IBlobStore store = options.Kind switch
        {
            StorageKind.FileSystem => new FileSystemBlobStore(options.Root, metrics, options.LockTimeout),
            StorageKind.AzureBlob => AzureBlobStore.Create(options, metrics),
            _ => throw new ArgumentOutOfRangeException(nameof(options), options.Kind, "Unknown storage kind."),
        };
        return new CredentialFreeUriBlobStore(store);
    }
}

/// <summary>Creates the container / root folder at start-up. A failure is logged, not fatal: the store retries
/// on first use, and readiness reports <see cref="IBlobStore.IsReachableAsync"/>.</summary>
internal sealed class StorageInitializer(IBlobStore store, ILogger<StorageInitializer>? logger = null) : IHostedService
{
    private readonly ILogger _logger = (ILogger?)logger ?? NullLogger.Instance;

    public async Task StartAsync(CancellationToken cancellationToken)
    {
        try
        {
            await store.InitializeAsync(cancellationToken).ConfigureAwait(false);
            _logger.LogInformation("Adapter store ready at {StoreUri}", store.UriFor("adapters/"));
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            _logger.LogError(e, "Adapter store at {StoreUri} could not be initialised; will retry on first use", store.UriFor("adapters/"));
        }
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
