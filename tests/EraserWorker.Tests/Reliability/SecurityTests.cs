using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using Azure.Storage.Blobs;
using Azure.Storage.Sas;
using EraserWorker.Contracts;
using EraserWorker.Hosting;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using EraserWorker.Tests.Worker;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Reliability;

/// <summary>
/// Transport security and secrets: plain HTTP to a remote blob endpoint is refused at start-up; TLS to RabbitMQ is really
/// used when configured (no silent plaintext fallback); passwords, account keys and SAS signatures appear in no log line
/// and no event, even at Debug level and when the connection fails; a SAS never leaks through <c>adapterUri</c>.
/// </summary>
public sealed class SecurityTests(ITestOutputHelper output) : IDisposable
{
    /// <summary>A key-shaped secret (base64 of 64 random bytes), never valid anywhere.</summary>
    private static readonly string FakeAccountKey = Convert.ToBase64String(System.Security.Cryptography.RandomNumberGenerator.GetBytes(64));

    /// <summary>Azurite's published development key (public; the compose stack uses it).</summary>
    private const string AzuriteDevelopmentKey = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

    private readonly TempDirectory _temp = new("eraser-security");

    public void Dispose() => _temp.Dispose();

    public static TheoryData<string, string, bool> Endpoints => new()
    {
        { "http to another machine, account key", $"DefaultEndpointsProtocol=http;AccountName=prod;AccountKey={FakeAccountKey};EndpointSuffix=core.windows.net", false },
        { "http BlobEndpoint on another machine", $"BlobEndpoint=http://storage.example.com/prod;AccountName=prod;AccountKey={FakeAccountKey}", false },
        { "http BlobEndpoint on another machine, SAS", "BlobEndpoint=http://storage.example.com/prod;SharedAccessSignature=sv=2024-08-04&ss=b&srt=co&sp=rwdlc&sig=c2VjcmV0", false },
        { "https, account key", $"DefaultEndpointsProtocol=https;AccountName=prod;AccountKey={FakeAccountKey};EndpointSuffix=core.windows.net", true },
        { "http to this machine (Azurite beside the worker)", $"BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;AccountName=devstoreaccount1;AccountKey={FakeAccountKey}", true },
        { "UseDevelopmentStorage", "UseDevelopmentStorage=true", true },
        { "http to the compose network's Azurite with its published key", $"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={AzuriteDevelopmentKey};BlobEndpoint=http://azurite:10000/devstoreaccount1;", true },
    };

    [Theory]
    [MemberData(nameof(Endpoints))]
    public void Plain_http_to_a_remote_blob_endpoint_is_refused_at_start_up_without_echoing_the_secret(string what, string connectionString, bool accepted)
    {
        foreach (bool allowInsecure in new[] { false, true })
        {
            using var app = BuildInProcess(new Dictionary<string, string?>
            {
                ["Eraser:Storage:Kind"] = "AzureBlob",
                ["Eraser:Storage:ConnectionString"] = connectionString,
                [EraserWorker.Storage.Security.BlobEndpointSecurity.AllowInsecureHttpKey] = allowInsecure ? "true" : null,
            });
            var error = Record.Exception(() => app.Services.GetRequiredService<IOptions<StorageOptions>>().Value);
            if (accepted || allowInsecure)
            {
                Assert.True(error is null, $"{what} (AllowInsecureHttp={allowInsecure}): refused: {error?.Message}");
                continue;
            }
            var refused = Assert.IsType<OptionsValidationException>(error);
            output.WriteLine($"{what}: {refused.Message}");
            Assert.Contains(EraserWorker.Storage.Security.BlobEndpointSecurity.AllowInsecureHttpKey, refused.Message);
            Assert.DoesNotContain(FakeAccountKey, refused.Message);
            Assert.DoesNotContain("sig=", refused.Message);
        }
    }

    [Fact]
    public void Plain_http_service_uri_to_another_machine_is_refused()
    {
        using var app = BuildInProcess(new Dictionary<string, string?>
        {
            ["Eraser:Storage:Kind"] = "AzureBlob",
            ["Eraser:Storage:ServiceUri"] = "http://account.blob.core.windows.net",
        });
        var error = Assert.IsType<OptionsValidationException>(Record.Exception(() => app.Services.GetRequiredService<IOptions<StorageOptions>>().Value));
        Assert.Contains("Eraser:Storage:ServiceUri uses plain HTTP", error.Message);
    }

    [Theory]
    [InlineData("InMemory")]
    [InlineData("RabbitMq")]
    public void The_worker_never_reports_usage_telemetry_to_MassTransit_s_servers(string transport)
    {
        using var app = BuildInProcess(new Dictionary<string, string?> { ["Eraser:Transport:Kind"] = transport });
        Assert.False(app.Services.GetRequiredService<IOptions<MassTransit.UsageTelemetryOptions>>().Value.Enabled);
    }

    [Fact]
    public void A_SAS_put_into_blob_urls_by_the_Azure_SDK_is_dropped_from_the_worker_s_urls()
    {
        const string sas = "sv=2024-08-04&ss=b&srt=co&sp=rwdlc&se=2099-01-01T00%3A00%3A00Z&sig=c2VjcmV0c2lnbmF0dXJl";
        string connectionString = $"BlobEndpoint=https://account.blob.core.windows.net/;SharedAccessSignature={sas}";
        // The SDK itself: the SAS is part of every blob URL (this is why the worker strips it).
        var raw = AzureBlobStore.Create(new StorageOptions { Kind = StorageKind.AzureBlob, ConnectionString = connectionString, Container = "eraser" });
        output.WriteLine($"Azure SDK blob URL: {raw.UriFor("adapters/a/versions/000001/")}");
        using var app = BuildInProcess(new Dictionary<string, string?>
        {
            ["Eraser:Storage:Kind"] = "AzureBlob",
            ["Eraser:Storage:ConnectionString"] = connectionString,
        });
        var store = app.Services.GetRequiredService<AdapterStore>();
        string uri = store.VersionUri("tenant-a/bot", 1);
        Assert.Equal("https://account.blob.core.windows.net/eraser/adapters/tenant-a/bot/versions/000001/", uri);
        Assert.Equal("https://account.blob.core.windows.net/eraser/adapters/x/head.json", app.Services.GetRequiredService<IBlobStore>().UriFor("adapters/x/head.json"));
    }

    /// <summary>
    /// The worker process on a RabbitMQ user with a secret-looking password and on Azurite through a service SAS scoped to
    /// its one container with exactly the permissions docs/reliability.md lists (read, create, write, delete, list) and
    /// <c>Eraser:Storage:CreateContainer=false</c>, logging at Debug: it becomes ready, requests complete and their version
    /// is published (so those permissions suffice), and neither the password nor the SAS appears in any log line or event. Then a second process with a wrong password and a wrong account key: it
    /// logs its connection failures — without either secret.
    /// </summary>
    [ServiceFact]
    public async Task Secrets_never_appear_in_logs_or_events_even_at_debug_level_and_on_failed_connections()
    {
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var ridge = new RidgeOracle(seed: 81);
        await bed.RegisterAsync(ridge);
        string password = "S3cret-" + Guid.NewGuid().ToString("N") + "-Pw";
        string user = "eraser-secret-" + Guid.NewGuid().ToString("N")[..8];
        await using var management = await RabbitMqUser.CreateAsync(user, password, bed.VirtualHost.Name);

        // Least privilege: a service SAS for the worker's one container (sp=rcwdl), and no container creation.
        string sasConnectionString = ContainerSasConnectionString(bed.Container, BlobContainerSasPermissions.Read | BlobContainerSasPermissions.Create
            | BlobContainerSasPermissions.Write | BlobContainerSasPermissions.Delete | BlobContainerSasPermissions.List, out string sas);
        string signature = Uri.UnescapeDataString(sas.Split('&').Single(p => p.StartsWith("sig=", StringComparison.Ordinal))[4..]);
        string endpoint = bed.Container.Service.Uri.GetLeftPart(UriPartial.Path).TrimEnd('/');
        var debug = new Dictionary<string, string>
        {
            ["Eraser__Transport__Username"] = user,
            ["Eraser__Transport__Password"] = password,
            ["Eraser__Storage__ConnectionString"] = sasConnectionString,
            ["Eraser__Storage__CreateContainer"] = "false",
            ["Logging__LogLevel__Default"] = "Debug",
            ["Logging__LogLevel__MassTransit"] = "Debug",
            ["Logging__LogLevel__Microsoft"] = "Debug",
            ["Logging__LogLevel__Microsoft.AspNetCore"] = "Debug",
        };
        var worker = await bed.StartWorkerAsync("worker-sas", extra: debug);
        var broker = await bed.ConnectBrokerAsync();
        await broker.PublishAsync(new UnlearningRequested("sec-1", WorkerTestBed.AdapterId, UnlearningTasks.Remove, [ridge.Ids[1]]));
        await broker.PublishAsync(new UnlearningRequested("sec-bad", WorkerTestBed.AdapterId, UnlearningTasks.Remove, ["no-such-sample"]));
        var completed = (await broker.WaitCompletedAsync(["sec-1"], TimeSpan.FromSeconds(60), bed.Diagnostics)).Single();
        await broker.WaitFailedAsync(["sec-bad"], TimeSpan.FromSeconds(60), bed.Diagnostics);
        await broker.CollectForAsync(TimeSpan.FromSeconds(1));
        Assert.DoesNotContain("?", completed.AdapterUri);
        Assert.StartsWith(endpoint, completed.AdapterUri, StringComparison.Ordinal);
        Assert.Equal(1, completed.Version); // read the head, cache and base, wrote version 1, moved the head, on the container SAS
        Assert.Contains(broker.Published, p => p.Version == 1);
        Assert.Equal(HttpStatusCode.OK, await worker.ReadyStatusAsync());

        // A second process: wrong password, wrong account key (both secret-looking); it keeps failing to connect.
        string wrongPassword = "Wr0ng-" + Guid.NewGuid().ToString("N");
        var env = bed.WorkerEnvironment("worker-wrong");
        env["Eraser__Transport__Username"] = user;
        env["Eraser__Transport__Password"] = wrongPassword;
        env["Eraser__Storage__ConnectionString"] = $"DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey={FakeAccountKey};BlobEndpoint={endpoint};";
        foreach (var (k, v) in debug.Where(p => p.Key.StartsWith("Logging", StringComparison.Ordinal)))
            env[k] = v;
        await using (var wrong = WorkerProcess.Start("worker-wrong", env, output))
        {
            var watch = Stopwatch.StartNew();
            while (watch.Elapsed < TimeSpan.FromSeconds(12) && !(wrong.Output.Contains("ACCESS_REFUSED", StringComparison.Ordinal) && wrong.Output.Contains("403", StringComparison.Ordinal)))
                await Task.Delay(250);
            Assert.NotEqual(HttpStatusCode.OK, await wrong.ReadyStatusAsync());
            string log = wrong.Output;
            output.WriteLine($"worker-wrong wrote {log.Length} characters; mentions ACCESS_REFUSED: {log.Contains("ACCESS_REFUSED", StringComparison.Ordinal)}, 403: {log.Contains("403", StringComparison.Ordinal)}");
            AssertNoSecret(log, "worker-wrong's log", wrongPassword, FakeAccountKey);
        }

        string all = worker.Output;
        Assert.True(all.Length > 2000, "the Debug log is suspiciously short");
        AssertNoSecret(all, "worker-sas's log", password, sas, signature, Uri.EscapeDataString(signature));
        AssertNoSecret(string.Join("\n", broker.All.Select(e => e.Text)), "the events", password, sas, signature, Uri.EscapeDataString(signature));
    }

    /// <summary>A service SAS scoped to one existing container, signed with Azurite's development account key
    /// (<see cref="BlobSasBuilder"/>), with exactly the permissions docs/reliability.md lists: read, create, write, delete,
    /// list (<c>sp=rcwdl</c>). It is all the store needs: readiness, registration, versions, the head, replacement sets,
    /// prune — with <c>Eraser:Storage:CreateContainer</c> false (production) and true (the store then finds it may not
    /// create containers and checks that this one exists). A container that does not exist is reported, not created.</summary>
    [ServiceFact]
    public async Task A_container_scoped_SAS_with_read_create_write_delete_list_is_all_the_store_needs()
    {
        await using var container = AzuriteContainer.Create();
        await container.Client.CreateAsync();
        var permissions = BlobContainerSasPermissions.Read | BlobContainerSasPermissions.Create | BlobContainerSasPermissions.Write
                          | BlobContainerSasPermissions.Delete | BlobContainerSasPermissions.List;
        string connectionString = ContainerSasConnectionString(container, permissions, out string sas);
        output.WriteLine($"container SAS: {System.Text.RegularExpressions.Regex.Replace(sas, "sig=[^&]*", "sig=…")}");
        Assert.Contains("sr=c", sas);
        Assert.Contains("sp=rcwdl", sas);

        // What such a SAS does not allow (why CreateContainer=false is the production setting): creating the container.
        var sasContainer = new BlobContainerClient(new Uri($"{container.Client.Uri}?{sas}"));
        var refused = await Assert.ThrowsAsync<Azure.RequestFailedException>(() => sasContainer.CreateIfNotExistsAsync());
        output.WriteLine($"create container with the container SAS: {refused.Status} {refused.ErrorCode}");
        Assert.Equal(403, refused.Status);
        foreach (bool create in new[] { false, true })
        {
            var blobs = AzureBlobStore.Create(new StorageOptions { Kind = StorageKind.AzureBlob, ConnectionString = connectionString, Container = container.Name, CreateContainer = create });
            await blobs.InitializeAsync();
            Assert.True(await blobs.IsReachableAsync(), $"CreateContainer={create}: not reachable with the container SAS");
        }
        var options = new StorageOptions { Kind = StorageKind.AzureBlob, ConnectionString = connectionString, Container = container.Name, CreateContainer = false, WriterId = "sas-writer" };
        var store = new AdapterStore(StorageServiceCollectionExtensions.CreateBlobStore(options), options);
        var ridge = new RidgeOracle(seed: 82);
        var (adapter, cache) = ridge.WriteFiles(_temp.Sub("source"));
        await store.RegisterAsync("tenant-a/sas-bot", adapter, cache);
        string v1 = _temp.Sub("v1");
        foreach (var file in Directory.GetFiles(adapter))
            File.Copy(file, Path.Combine(v1, Path.GetFileName(file)));
        File.WriteAllText(Path.Combine(v1, StoredFileNames.Manifest), """{"format":"eraser.manifest/v1","version":1,"parentVersion":0}""");
        await store.WriteVersionAsync("tenant-a/sas-bot", 1, v1);
        Assert.True(await store.TryAdvanceHeadAsync("tenant-a/sas-bot", 1, (await store.GetHeadAsync("tenant-a/sas-bot"))!.ETag));
        Assert.Equal(new[] { 0, 1 }, await store.ListVersionsAsync("tenant-a/sas-bot"));
        await store.DownloadVersionAsync("tenant-a/sas-bot", 1, _temp.Sub("download"));
        await store.DownloadCacheAsync("tenant-a/sas-bot", _temp.Sub("cache"));
        string uri = await store.UploadReplacementsAsync("tenant-a/sas-bot", AdapterStore.NewReplacementName(), cache);
        await store.DownloadReplacementsAsync("tenant-a/sas-bot", uri, _temp.Sub("replacements"));
        Assert.Empty((await store.PruneAsync("tenant-a/sas-bot")).Kept);
        Assert.Equal(new[] { "tenant-a/sas-bot" }, await store.ListAdaptersAsync().ToListAsync());

        // A container that does not exist: with CreateContainer false it is reported (not ready; a clear error), never created.
        var missing = AzureBlobStore.Create(new StorageOptions { Kind = StorageKind.AzureBlob, ConnectionString = container.ConnectionString, Container = container.Name + "-missing", CreateContainer = false });
        Assert.False(await missing.IsReachableAsync());
        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => missing.InitializeAsync());
        output.WriteLine(error.Message);
        Assert.Contains("Eraser:Storage:CreateContainer is false", error.Message);
        Assert.False((await container.Service.GetBlobContainerClient(container.Name + "-missing").ExistsAsync()).Value);
    }

    /// <summary>The CLI gets the same credential-free store as the worker: with a container SAS in its connection string,
    /// nothing <c>adapters register | show | download</c> print — URIs, status lines, JSON — carries the signature.</summary>
    [ServiceFact]
    public async Task The_clis_output_never_contains_the_storage_credential()
    {
        await using var container = AzuriteContainer.Create();
        await container.Client.CreateAsync();
        var permissions = BlobContainerSasPermissions.Read | BlobContainerSasPermissions.Create | BlobContainerSasPermissions.Write
                          | BlobContainerSasPermissions.Delete | BlobContainerSasPermissions.List;
        string connectionString = ContainerSasConnectionString(container, permissions, out string sas);
        string signature = Uri.UnescapeDataString(sas.Split('&').Single(p => p.StartsWith("sig=", StringComparison.Ordinal))[4..]);
        var ridge = new RidgeOracle(seed: 84);
        var (adapter, cache) = ridge.WriteFiles(_temp.Sub("source"));
        var environment = new Dictionary<string, string?>
        {
            ["Eraser__Storage__Kind"] = "AzureBlob",
            ["Eraser__Storage__ConnectionString"] = connectionString,
            ["Eraser__Storage__Container"] = container.Name,
            ["Eraser__Storage__CreateContainer"] = "false",
        };
        var outputs = new List<string>();
        foreach (var args in new[]
        {
            new[] { "adapters", "register", "--id", "tenant-a/cli-sas", "--adapter", adapter, "--cache", cache },
            ["adapters", "register", "--id", "tenant-a/cli-sas-json", "--adapter", adapter, "--cache", cache, "--json"],
            ["adapters", "show", "--id", "tenant-a/cli-sas"],
            ["adapters", "show", "--id", "tenant-a/cli-sas", "--json"],
            ["adapters", "download", "--id", "tenant-a/cli-sas", "--out", _temp.Sub("download"), "--json"],
            ["replacements", "upload", "--id", "tenant-a/cli-sas", "--cache", cache],
        })
        {
            var result = await EraserWorker.Cli.Tests.CliHarness.RunProcessAsync(_temp.Path, environment, args);
            Assert.True(result.Exit == 0, $"eraser {string.Join(' ', args)}: {result}");
            outputs.Add(result.Out + result.Err);
        }
        string all = string.Join("\n", outputs);
        Assert.Contains(container.Name, all); // the URIs are there, without their query string
        Assert.DoesNotContain("sig=", all);
        AssertNoSecret(all, "the CLI's output", sas, signature, Uri.EscapeDataString(signature));
    }

    /// <summary>A read-only container SAS (<c>sp=rl</c>): the store is reachable and reads work, every write fails at once
    /// with <see cref="StorageAccessDeniedException"/>, whose message names the operation, the blob and the permissions
    /// needed — and not the signature.</summary>
    [ServiceFact]
    public async Task A_read_only_SAS_reads_but_writes_fail_clearly()
    {
        await using var container = AzuriteContainer.Create();
        var ridge = new RidgeOracle(seed: 83);
        var (adapter, cache) = ridge.WriteFiles(_temp.Sub("source"));
        await new AdapterStore(new AzureBlobStore(container.Client)).RegisterAsync("tenant-a/ro-bot", adapter, cache);
        string connectionString = ContainerSasConnectionString(container, BlobContainerSasPermissions.Read | BlobContainerSasPermissions.List, out string sas);
        string signature = Uri.UnescapeDataString(sas.Split('&').Single(p => p.StartsWith("sig=", StringComparison.Ordinal))[4..]);
        var options = new StorageOptions { Kind = StorageKind.AzureBlob, ConnectionString = connectionString, Container = container.Name, CreateContainer = false };
        var store = new AdapterStore(StorageServiceCollectionExtensions.CreateBlobStore(options), options);

        Assert.True(await store.Blobs.IsReachableAsync());
        Assert.Equal(0, (await store.GetHeadAsync("tenant-a/ro-bot"))!.Version);
        await store.DownloadVersionAsync("tenant-a/ro-bot", 0, _temp.Sub("v0"));

        var watch = Stopwatch.StartNew();
        var denied = await Assert.ThrowsAsync<StorageAccessDeniedException>(() => store.RegisterAsync("tenant-a/other-bot", adapter, cache));
        output.WriteLine($"after {watch.Elapsed.TotalSeconds:F1} s: {denied.Message}");
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(10), "a permission error must not be retried for long");
        Assert.Equal("write", denied.Operation);
        Assert.Contains("read, create, write, delete and list", denied.Message);
        Assert.Contains(container.Name, denied.Message);
        AssertNoSecret(denied.ToString(), "the exception", signature, Uri.EscapeDataString(signature));
        var delete = await Assert.ThrowsAsync<StorageAccessDeniedException>(() => store.Blobs.DeleteAsync(BlobLayout.Head("tenant-a/ro-bot")));
        Assert.Equal("delete", delete.Operation);
        Assert.Equal(0, (await store.GetHeadAsync("tenant-a/ro-bot"))!.Version);
    }

    /// <summary>A connection string with a service SAS for <paramref name="container"/> only, signed with the account key of
    /// the test Azurite's connection string (Azurite's published development key).</summary>
    private static string ContainerSasConnectionString(AzuriteContainer container, BlobContainerSasPermissions permissions, out string sas)
    {
        var parts = container.ConnectionString.Split(';', StringSplitOptions.RemoveEmptyEntries)
            .Select(p => p.Split('=', 2)).ToDictionary(p => p[0], p => p.Length > 1 ? p[1] : "", StringComparer.OrdinalIgnoreCase);
        var builder = new BlobSasBuilder(permissions, DateTimeOffset.UtcNow.AddHours(1))
        {
            BlobContainerName = container.Name,
            Resource = "c",
            StartsOn = DateTimeOffset.UtcNow.AddMinutes(-5),
        };
        sas = builder.ToSasQueryParameters(new Azure.Storage.StorageSharedKeyCredential(parts["AccountName"], parts["AccountKey"])).ToString();
        string endpoint = container.Service.Uri.GetLeftPart(UriPartial.Path).TrimEnd('/');
        return $"BlobEndpoint={endpoint};SharedAccessSignature={sas}";
    }

    /// <summary><c>Eraser:Transport:UseTls</c> really switches to TLS: against the broker's plaintext port the TLS handshake
    /// fails and the worker never becomes ready (no silent fallback to plaintext), with a warning about the port.</summary>
    [ServiceFact]
    public async Task TLS_to_RabbitMQ_is_used_when_configured_and_never_falls_back_to_plaintext()
    {
        await using var bed = await WorkerTestBed.CreateAsync(output);
        var env = bed.WorkerEnvironment("worker-tls");
        env["Eraser__Transport__UseTls"] = "true";
        await using var worker = WorkerProcess.Start("worker-tls", env, output);
        var watch = Stopwatch.StartNew();
        bool everReady = false;
        while (watch.Elapsed < TimeSpan.FromSeconds(10))
        {
            everReady |= await worker.ReadyStatusAsync() == HttpStatusCode.OK;
            await Task.Delay(250);
        }
        string log = worker.Output;
        Assert.False(everReady, "the worker became ready over TLS against a plaintext port:\n" + worker.Tail());
        Assert.Contains("amqps://", log);
        Assert.Contains("UseTls is true but Port is 5672", log);
        Assert.True(log.Contains("SSL", StringComparison.OrdinalIgnoreCase) || log.Contains("TLS", StringComparison.Ordinal)
                    || log.Contains("Authentication", StringComparison.Ordinal) || log.Contains("BrokerUnreachable", StringComparison.Ordinal),
            "no TLS/connection error logged:\n" + worker.Tail());
    }

    /// <summary>An https blob endpoint is used as https: against Azurite's plaintext port the store is unreachable.</summary>
    [ServiceFact]
    public async Task An_https_blob_endpoint_is_never_reached_over_plain_http()
    {
        string azurite = TestServices.RequireAzurite();
        string https = string.Join(';', azurite.Split(';').Select(p => p.StartsWith("BlobEndpoint=http://", StringComparison.OrdinalIgnoreCase)
            ? "BlobEndpoint=https://" + p["BlobEndpoint=http://".Length..]
            : p.StartsWith("DefaultEndpointsProtocol=", StringComparison.OrdinalIgnoreCase) ? "DefaultEndpointsProtocol=https" : p));
        Assert.Contains("https://", https);
        var store = AzureBlobStore.Create(new StorageOptions { Kind = StorageKind.AzureBlob, ConnectionString = https, Container = "tls-check" });
        var watch = Stopwatch.StartNew();
        Assert.False(await store.IsReachableAsync());
        output.WriteLine($"unreachable over https after {watch.Elapsed.TotalSeconds:F1} s");
    }

    private static void AssertNoSecret(string text, string where, params string[] secrets)
    {
        foreach (var secret in secrets.Where(s => s.Length >= 8))
        {
            int at = text.IndexOf(secret, StringComparison.Ordinal);
            Assert.True(at < 0, $"{where} contains a secret: …{text[Math.Max(0, at - 200)..Math.Min(text.Length, at + secret.Length + 50)]}…");
        }
    }

    /// <summary>The worker's host as Program.cs composes it (not started), with <paramref name="settings"/>.</summary>
    private WebApplication BuildInProcess(Dictionary<string, string?> settings)
    {
        var builder = WebApplication.CreateBuilder(new WebApplicationOptions { ContentRootPath = _temp.Path, EnvironmentName = "Production" });
        settings.TryAdd("Eraser:Worker:WorkDirectory", _temp.Sub("work"));
        settings.TryAdd("Eraser:Http:Port", "0");
        builder.Configuration.AddInMemoryCollection(settings);
        builder.Logging.ClearProviders();
        builder.AddEraserWorker();
        return builder.Build();
    }
}

/// <summary>A RabbitMQ user with a given password and full permissions on one virtual host, created through the
/// management API (with the test broker's own credentials) and deleted on dispose.</summary>
public sealed class RabbitMqUser : IAsyncDisposable
{
    private readonly HttpClient _client;
    private readonly string _user;

    private RabbitMqUser(HttpClient client, string user)
    {
        _client = client;
        _user = user;
    }

    public static async Task<RabbitMqUser> CreateAsync(string user, string password, string vhost)
    {
        var amqp = new Uri(TestServices.RequireRabbitMq());
        string management = Environment.GetEnvironmentVariable(RabbitMqVirtualHost.ManagementVariable) is { Length: > 0 } m ? m : $"http://{amqp.Host}:15672/";
        var credentials = amqp.UserInfo.Split(':', 2);
        string admin = credentials[0].Length > 0 ? Uri.UnescapeDataString(credentials[0]) : "guest";
        string adminPassword = credentials.Length > 1 ? Uri.UnescapeDataString(credentials[1]) : "guest";
        var client = new HttpClient { BaseAddress = new Uri(management.EndsWith('/') ? management : management + "/"), Timeout = TimeSpan.FromSeconds(30) };
        client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{admin}:{adminPassword}")));
        var created = new RabbitMqUser(client, user);
        await created.PutAsync($"api/users/{Uri.EscapeDataString(user)}", new System.Text.Json.Nodes.JsonObject { ["password"] = password, ["tags"] = "" }.ToJsonString());
        await created.PutAsync($"api/permissions/{Uri.EscapeDataString(vhost)}/{Uri.EscapeDataString(user)}", """{"configure":".*","write":".*","read":".*"}""");
        return created;
    }

    private async Task PutAsync(string path, string json)
    {
        using var response = await _client.PutAsync(path, new StringContent(json, Encoding.UTF8, "application/json"));
        Assert.True(response.IsSuccessStatusCode, $"RabbitMQ management PUT {path}: {(int)response.StatusCode} {await response.Content.ReadAsStringAsync()}");
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            using var _ = await _client.DeleteAsync($"api/users/{Uri.EscapeDataString(_user)}");
        }
        catch (HttpRequestException)
        {
        }
        _client.Dispose();
    }
}
