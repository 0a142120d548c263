using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json.Nodes;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Worker;

/// <summary>
/// One isolated world per test: a fresh RabbitMQ virtual host, a fresh Azurite container, a temporary folder,
/// the test's own <see cref="AdapterStore"/> on that container, worker processes started against them and a
/// <see cref="BrokerClient"/>. Disposing kills the workers (their logs go to the test output) and removes the
/// virtual host, the container and the folder.
/// </summary>
public sealed class WorkerTestBed : IAsyncDisposable
{
    public const string AdapterId = "tenant-a/support-bot";

    private readonly List<WorkerProcess> _workers = [];
    private readonly List<IAsyncDisposable> _others = [];

    private WorkerTestBed(ITestOutputHelper output, RabbitMqVirtualHost vhost, AzuriteContainer container)
    {
        Output = output;
        VirtualHost = vhost;
        Container = container;
        Store = new AdapterStore(new AzureBlobStore(container.Client), new StorageOptions { WriterId = "tests" });
    }

    public ITestOutputHelper Output { get; }
    public RabbitMqVirtualHost VirtualHost { get; }
    public AzuriteContainer Container { get; }
    public TempDirectory Temp { get; } = new("eraser-worker-test");
    public AdapterStore Store { get; }
    public IReadOnlyList<WorkerProcess> Workers => _workers;
    public Stopwatch Clock { get; } = Stopwatch.StartNew();

    public static async Task<WorkerTestBed> CreateAsync(ITestOutputHelper output)
    {
        var container = AzuriteContainer.Create();
        RabbitMqVirtualHost vhost;
        try
        {
            vhost = await RabbitMqVirtualHost.CreateAsync("eraser-worker");
        }
        catch
        {
            await container.DisposeAsync();
            throw;
        }
        var bed = new WorkerTestBed(output, vhost, container);
        bed.Log($"virtual host {vhost.Name}, container {container.Name}");
        return bed;
    }

    public void Log(string line)
    {
        try
        {
            Output.WriteLine($"[{Clock.Elapsed.TotalSeconds,6:F2}s] {line}");
        }
        catch (InvalidOperationException)
        {
        }
    }

    /// <summary>Writes the oracle's adapter and cache and registers them (version 0) under <paramref name="adapterId"/>.</summary>
    public async Task RegisterAsync(RidgeOracle ridge, string adapterId = AdapterId)
    {
        var (adapter, cache) = ridge.WriteFiles(Temp.Sub("source-" + Guid.NewGuid().ToString("N")[..8]));
        var registered = await Store.RegisterAsync(adapterId, adapter, cache);
        Assert.Equal(0, registered.Version);
    }

    /// <summary>The worker's configuration: SPEC §5 keys as environment variables, RabbitMQ on this test's virtual
    /// host, Azure Blob on this test's container, its own work folder.</summary>
    public Dictionary<string, string> WorkerEnvironment(string name, TimeSpan? batchTimeLimit = null) => new()
    {
        ["Eraser__Transport__Kind"] = "RabbitMq",
        ["Eraser__Transport__Host"] = VirtualHost.Host,
        ["Eraser__Transport__Port"] = VirtualHost.Port.ToString(CultureInfo.InvariantCulture),
        ["Eraser__Transport__Username"] = VirtualHost.Username,
        ["Eraser__Transport__Password"] = VirtualHost.Password,
        ["Eraser__Transport__VirtualHost"] = VirtualHost.Name,
        ["Eraser__Storage__Kind"] = "AzureBlob",
        ["Eraser__Storage__ConnectionString"] = Container.ConnectionString,
        ["Eraser__Storage__Container"] = Container.Name,
        ["Eraser__Worker__WorkDirectory"] = Temp.Sub("work-" + name),
        ["Eraser__Worker__BatchTimeLimit"] = (batchTimeLimit ?? TimeSpan.FromMilliseconds(300)).ToString("c", CultureInfo.InvariantCulture),
        ["Eraser__Compute__Device"] = "cpu",
    };

    /// <summary>Starts a worker process and waits for <c>/health/ready</c>.</summary>
    public async Task<WorkerProcess> StartWorkerAsync(string name = "worker", TimeSpan? batchTimeLimit = null, IReadOnlyDictionary<string, string>? extra = null)
    {
        var environment = WorkerEnvironment(name, batchTimeLimit);
        foreach (var (k, v) in extra ?? new Dictionary<string, string>())
            environment[k] = v;
        for (int attempt = 1; ; attempt++)
        {
            var worker = WorkerProcess.Start(name, environment, Output);
            _workers.Add(worker);
            try
            {
                await worker.WaitReadyAsync();
            }
            catch (Xunit.Sdk.XunitException) when (attempt < 3 && worker.LostPortRace)
            {
                Log($"{name}: its HTTP port {worker.HttpPort} was taken meanwhile; starting it again on another");
                continue;
            }
            Log($"{name} ready");
            return worker;
        }
    }

    /// <summary>Connects the test's own AMQP client (after a worker declared the exchanges).</summary>
    public async Task<BrokerClient> ConnectBrokerAsync()
    {
        var client = await BrokerClient.ConnectAsync(VirtualHost);
        _others.Add(client);
        return client;
    }

    /// <summary>The workers' recent output, for failure messages.</summary>
    public string Diagnostics() => string.Join("\n", _workers.Select(w => w.Tail(80)));

    /// <summary>Downloads a version into a new folder and returns the folder.</summary>
    public async Task<string> DownloadAsync(int version, string adapterId = AdapterId)
    {
        string dir = Path.Combine(Temp.Path, $"download-v{version}-{Guid.NewGuid():N}");
        var downloaded = await Store.DownloadVersionAsync(adapterId, version, dir);
        Assert.Equal(version, downloaded.Version);
        return dir;
    }

    /// <summary>The manifest of a version (must exist).</summary>
    public async Task<AdapterManifest> ManifestAsync(int version, string adapterId = AdapterId) =>
        await Store.ReadManifestAsync(adapterId, version) ?? throw new Xunit.Sdk.XunitException($"version {version} of {adapterId} has no manifest");

    /// <summary>The request ids a version's manifest says it applied first (<c>requests[].requestId</c>).</summary>
    public static List<string> AppliedRequestIds(AdapterManifest manifest) => manifest.Requests.Select(r => r.RequestId).ToList();

    public static string Sha256OfFile(string path)
    {
        using var stream = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(stream));
    }

    public static string ModelFile(string versionDir) => Path.Combine(versionDir, StoredFileNames.AdapterWeights);

    /// <summary>Runs /usr/bin/python3 with a script (written to the temp folder) and arguments; returns standard output,
    /// fails with standard error on a non-zero exit or after 60 s.</summary>
    public async Task<string> RunPythonAsync(string script, IEnumerable<string> arguments, string? stdin = null)
    {
        const string python = "/usr/bin/python3";
        Assert.True(File.Exists(python), $"{python} is needed (Debian's python3; scripts/test.sh installs python3-pika with it).");
        string file = Path.Combine(Temp.Path, $"script-{Guid.NewGuid():N}.py");
        await File.WriteAllTextAsync(file, script);
        var start = new ProcessStartInfo(python)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = true,
            UseShellExecute = false,
            StandardOutputEncoding = Encoding.UTF8,
            StandardErrorEncoding = Encoding.UTF8,
        };
        start.Environment["PYTHONIOENCODING"] = "utf-8";
        start.ArgumentList.Add(file);
        foreach (var a in arguments)
            start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        if (stdin is not null)
            await process.StandardInput.WriteAsync(stdin);
        process.StandardInput.Close();
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        try
        {
            await process.WaitForExitAsync(timeout.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            Assert.Fail($"python3 {Path.GetFileName(file)} did not finish within 60 s. stderr: {await stderr}");
        }
        string errors = await stderr;
        Assert.True(process.ExitCode == 0, $"python3 {Path.GetFileName(file)} exited with {process.ExitCode}: {errors}{await stdout}" +
            (errors.Contains("ModuleNotFoundError", StringComparison.Ordinal) ? " — scripts/services.sh deps (run by scripts/test.sh) installs python3-pika." : ""));
        return await stdout;
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        foreach (var worker in _workers)
            await worker.DisposeAsync();
        foreach (var other in _others)
            await other.DisposeAsync();
        await VirtualHost.DisposeAsync();
        await Container.DisposeAsync();
        Temp.Dispose();
    }
}
