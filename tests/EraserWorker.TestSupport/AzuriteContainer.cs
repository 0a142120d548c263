using Azure.Storage.Blobs;

namespace EraserWorker.Tests.Infrastructure;

/// <summary>A fresh, uniquely named container on the Azurite of <see cref="TestServices.AzuriteVariable"/>,
/// deleted on dispose.</summary>
public sealed class AzuriteContainer : IAsyncDisposable
{
    private AzuriteContainer(string connectionString, string name)
    {
        ConnectionString = connectionString;
        Name = name;
        Service = new BlobServiceClient(connectionString);
    }

    /// <summary>The connection string.</summary>
    public string ConnectionString { get; }

    /// <summary>The container name (not created yet: the store under test creates it).</summary>
    public string Name { get; }

    /// <summary>The service client.</summary>
    public BlobServiceClient Service { get; }

    /// <summary>A client of the container.</summary>
    public BlobContainerClient Client => Service.GetBlobContainerClient(Name);

    /// <summary>Reserves a new container name; fails (or skips) when Azurite is not configured.</summary>
    public static AzuriteContainer Create() =>
        new(TestServices.RequireAzurite(), "t-" + Guid.NewGuid().ToString("N")[..20]);

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        try
        {
            await Client.DeleteIfExistsAsync();
        }
        catch (Azure.RequestFailedException)
        {
        }
    }
}
