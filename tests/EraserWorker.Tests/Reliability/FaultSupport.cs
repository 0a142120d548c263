using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Storage;
using EraserWorker.Tests.Infrastructure;
using EraserWorker.Tests.Worker;
using RabbitMQ.Client;

namespace EraserWorker.Tests.Reliability;

/// <summary>
/// Sizes of the fault-injection runs. CI runs the small defaults; <c>scripts/fault-injection.sh</c> sets the
/// environment for the full run before releases (200 requests, 10 kills, several seeds).
/// </summary>
public sealed record FaultSettings(int Requests, int Kills, int Seed, TimeSpan Outage)
{
    public const string RequestsVariable = "ERASER_FAULT_REQUESTS";
    public const string KillsVariable = "ERASER_FAULT_KILLS";
    public const string SeedVariable = "ERASER_FAULT_SEED";
    public const string OutageVariable = "ERASER_FAULT_OUTAGE_SECONDS";

    public static FaultSettings FromEnvironment(int requests, int kills) => new(
        Int(RequestsVariable) ?? requests,
        Int(KillsVariable) ?? kills,
        Int(SeedVariable) ?? Environment.TickCount & 0xFFFF,
        TimeSpan.FromSeconds(Int(OutageVariable) ?? 30));

    private static int? Int(string variable) =>
        int.TryParse(Environment.GetEnvironmentVariable(variable), NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) ? v : null;

    public override string ToString() =>
        $"{Requests} requests, {Kills} kills, seed {Seed} (replay: {SeedVariable}={Seed} {RequestsVariable}={Requests} {KillsVariable}={Kills})";
}

/// <summary>
/// What the store says happened to an adapter, read only through <see cref="AdapterStore"/>: the chain of versions from
/// the head back to the base along <c>parentVersion</c>, which version of that chain applied each request, the head's
/// request history, and the complete versions that are not on the chain (orphans: a replica lost the head race, or was
/// killed between its manifest and the head).
/// </summary>
public sealed class ChainAudit
{
    public required int Head { get; init; }
    public required IReadOnlyList<int> Chain { get; init; }
    public required IReadOnlyList<int> Orphans { get; init; }
    public required IReadOnlyDictionary<string, int> AppliedIn { get; init; }
    public required IReadOnlyList<string> Duplicates { get; init; }
    public required IReadOnlyDictionary<int, AdapterManifest> Manifests { get; init; }

    /// <summary>What the store's redelivery index (request markers and the head's own requests) says applied each request
    /// the chain applied.</summary>
    public required IReadOnlyDictionary<string, int> Recorded { get; init; }
    public required IReadOnlyList<string> Claims { get; init; }

    public AdapterManifest HeadManifest => Manifests[Head];

    public static async Task<ChainAudit> LoadAsync(AdapterStore store, string adapterId)
    {
        var head = await store.GetHeadAsync(adapterId) ?? throw new Xunit.Sdk.XunitException($"{adapterId} has no head");
        var complete = await store.ListVersionsAsync(adapterId);
        var manifests = new Dictionary<int, AdapterManifest>();
        var chain = new List<int>();
        for (int v = head.Version; ; )
        {
            // The head must point to a complete version, and so must every parent.
            var manifest = await store.ReadManifestAsync(adapterId, v)
                ?? throw new Xunit.Sdk.XunitException($"version {v} of {adapterId} is on the head's chain but has no manifest (incomplete)");
            manifests[v] = manifest;
            chain.Add(v);
            if (v == 0)
                break;
            int parent = manifest.ParentVersion ?? throw new Xunit.Sdk.XunitException($"version {v} has no parentVersion");
            Assert.True(parent < v, $"version {v} names parent {parent}: the chain must go back in numbers");
            v = parent;
        }
        chain.Reverse();
        var appliedIn = new Dictionary<string, int>(StringComparer.Ordinal);
        var duplicates = new List<string>();
        foreach (int v in chain.Skip(1))
        {
            var ids = WorkerTestBed.AppliedRequestIds(manifests[v]);
            Assert.True(ids.Count > 0, $"version {v} on the chain applies no request");
            foreach (var id in ids)
                if (!appliedIn.TryAdd(id, v))
                    duplicates.Add($"{id} in versions {appliedIn[id]} and {v}");
        }
        var claims = new List<string>();
        await foreach (var name in store.Blobs.ListAsync(BlobLayout.Claims(adapterId)))
            claims.Add(name);
        var recorded = await store.FindAppliedAsync(manifests[head.Version], appliedIn.Keys.ToList());
        return new ChainAudit
        {
            Recorded = recorded,
            Head = head.Version,
            Chain = chain,
            Orphans = complete.Except(chain).ToList(),
            AppliedIn = appliedIn,
            Duplicates = duplicates,
            Manifests = manifests,
            Claims = claims,
        };
    }

    /// <summary>The head's cumulative removals (<c>edits.removed</c>).</summary>
    public List<string> HeadRemoved() => HeadManifest.Edits.Removed.ToList();

    public string Describe() =>
        $"head {Head}; chain [{string.Join(",", Chain)}]; orphans [{string.Join(",", Orphans)}]; claims left [{string.Join(",", Claims)}]";

    /// <summary>
    /// Nothing lost, nothing applied twice, a linear history: every expected request is applied by exactly one version
    /// of the chain; the store's redelivery index says the same; every completion event names that version.
    /// </summary>
    public void AssertExactlyOnce(IReadOnlyCollection<string> expected, IEnumerable<UnlearningCompleted> completions)
    {
        Assert.True(Duplicates.Count == 0, $"requests applied twice: {string.Join("; ", Duplicates)} ({Describe()})");
        var missing = expected.Where(id => !AppliedIn.ContainsKey(id)).ToList();
        Assert.True(missing.Count == 0, $"{missing.Count} request(s) never applied: {string.Join(", ", missing.Take(20))} ({Describe()})");
        var unexpected = AppliedIn.Keys.Except(expected).ToList();
        Assert.True(unexpected.Count == 0, $"versions apply requests nobody sent: {string.Join(", ", unexpected.Take(20))}");
        Assert.True(Recorded.Count == AppliedIn.Count && AppliedIn.All(p => Recorded.TryGetValue(p.Key, out int v) && v == p.Value),
            $"the store's record of applied requests ({Recorded.Count} entries) disagrees with the chain's manifests ({AppliedIn.Count} requests)");
        foreach (var c in completions)
            Assert.True(AppliedIn.TryGetValue(c.RequestId, out int v) && v == c.Version,
                $"{c.RequestId} was announced complete in version {c.Version}, but the chain applies it in {(AppliedIn.TryGetValue(c.RequestId, out int w) ? w : "no version")} ({Describe()})");
    }

    /// <summary>Every version of the chain equals exact retraining on its own cumulative removals (path independence:
    /// a version is a pure function of the base, the cache and the cumulative edit set, however it was reached).</summary>
    public async Task AssertEveryVersionEqualsRetrainingAsync(WorkerTestBed bed, RidgeOracle ridge, string adapterId, int maxVersions = int.MaxValue)
    {
        foreach (int v in Chain.Skip(1).Reverse().Take(maxVersions))
        {
            var removed = Manifests[v].Edits.Removed.ToList();
            string dir = await bed.DownloadAsync(v, adapterId);
            ridge.AssertEqualsRetraining(WorkerTestBed.ModelFile(dir), ridge.Retrain(removed), $"version {v} ({removed.Count} removed)");
        }
    }
}

/// <summary>
/// Durable, named queues bound to the three outgoing exchanges, read at the end: unlike <see cref="BrokerClient"/>'s
/// exclusive queues they survive a broker restart, so no event is missed while the test's own connection is down.
/// </summary>
public sealed class DurableEvents
{
    private readonly RabbitMqVirtualHost _vhost;
    private readonly Dictionary<string, string> _queues;
    private readonly List<BrokerEvent> _events = [];
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    private DurableEvents(RabbitMqVirtualHost vhost, Dictionary<string, string> queues)
    {
        _vhost = vhost;
        _queues = queues;
    }

    public static async Task<DurableEvents> CreateAsync(RabbitMqVirtualHost vhost)
    {
        await using var connection = await vhost.ConnectAsync("eraser-tests-durable-events");
        await using var channel = await connection.CreateChannelAsync();
        var queues = new Dictionary<string, string>();
        foreach (var exchange in BrokerClient.OutgoingExchanges)
        {
            string queue = "reliability-" + exchange;
            await channel.QueueDeclareAsync(queue, durable: true, exclusive: false, autoDelete: false);
            await channel.QueueBindAsync(queue, exchange, "");
            queues[exchange] = queue;
        }
        return new DurableEvents(vhost, queues);
    }

    /// <summary>Takes what has arrived (a fresh connection each time; fails while the broker is down).</summary>
    public async Task DrainAsync()
    {
        await using var connection = await _vhost.ConnectAsync("eraser-tests-durable-drain");
        await using var channel = await connection.CreateChannelAsync();
        foreach (var (exchange, queue) in _queues)
        {
            while (await channel.BasicGetAsync(queue, autoAck: true) is { } message)
                _events.Add(new BrokerEvent(exchange, message.BasicProperties.ContentType, message.Body.ToArray(), _clock.Elapsed));
        }
    }

    public List<UnlearningCompleted> Completed => _events.Where(e => e.Exchange == ExchangeNames.UnlearningCompleted).Select(BrokerClient.Parse<UnlearningCompleted>).ToList();

    public List<UnlearningFailed> Failed => _events.Where(e => e.Exchange == ExchangeNames.UnlearningFailed).Select(BrokerClient.Parse<UnlearningFailed>).ToList();

    /// <summary>Drains until every id has a completion or a failure, or fails after <paramref name="timeout"/>.</summary>
    public async Task WaitAnsweredAsync(IReadOnlyCollection<string> ids, TimeSpan timeout, Func<string> diagnostics)
    {
        var watch = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                await DrainAsync();
            }
            catch (Exception e) when (e is RabbitMQ.Client.Exceptions.BrokerUnreachableException or IOException
                                          or RabbitMQ.Client.Exceptions.OperationInterruptedException or RabbitMQ.Client.Exceptions.AlreadyClosedException)
            {
                // the broker is not back yet
            }
            var answered = Completed.Select(c => c.RequestId).Concat(Failed.Select(f => f.RequestId)).ToHashSet(StringComparer.Ordinal);
            var missing = ids.Where(id => !answered.Contains(id)).ToList();
            if (missing.Count == 0)
                return;
            if (watch.Elapsed > timeout)
                Assert.Fail($"after {timeout.TotalSeconds:F0} s, {missing.Count} of {ids.Count} requests are unanswered: {string.Join(", ", missing.Take(20))}\n{diagnostics()}");
            await Task.Delay(500);
        }
    }
}

/// <summary>One message of a dead-letter queue (<c>_error</c> or <c>_skipped</c>) with its MassTransit headers.</summary>
public sealed record DeadLetter(string Queue, string Body, IReadOnlyDictionary<string, string> Headers)
{
    public string Reason => Headers.TryGetValue("MT-Reason", out var r) ? r : "";
    public string FaultMessage => Headers.TryGetValue("MT-Fault-Message", out var m) ? m : "";

    /// <summary>Reads (and removes) every message of <paramref name="queue"/>.</summary>
    public static async Task<List<DeadLetter>> TakeAllAsync(RabbitMqVirtualHost vhost, string queue)
    {
        var result = new List<DeadLetter>();
        if (await vhost.MessageCountAsync(queue) is null)
            return result;
        await using var connection = await vhost.ConnectAsync("eraser-tests-dead-letters");
        await using var channel = await connection.CreateChannelAsync();
        while (await channel.BasicGetAsync(queue, autoAck: true) is { } message)
        {
            var headers = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var (k, v) in message.BasicProperties.Headers ?? new Dictionary<string, object?>())
                headers[k] = v switch
                {
                    byte[] bytes => Encoding.UTF8.GetString(bytes),
                    null => "",
                    _ => Convert.ToString(v, CultureInfo.InvariantCulture) ?? "",
                };
            result.Add(new DeadLetter(queue, Encoding.UTF8.GetString(message.Body.Span), headers));
        }
        return result;
    }
}

/// <summary>
/// Stops and starts the shared test services through <c>scripts/services.sh</c>. Only services that the script itself
/// runs can be disrupted ("running"); an external one fails the test (or skips it with
/// <c>ERASER_TEST_ALLOW_MISSING_SERVICES=1</c>).
/// </summary>
public static class ServiceControl
{
    public static string RepositoryRoot
    {
        get
        {
            for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
                if (File.Exists(Path.Combine(dir.FullName, "scripts", "services.sh")))
                    return dir.FullName;
            throw new InvalidOperationException($"scripts/services.sh not found above {AppContext.BaseDirectory}");
        }
    }

    /// <summary>Fails (or skips) unless <paramref name="service"/> is run by scripts/services.sh, so it can be stopped.</summary>
    public static async Task RequireControllableAsync(string service)
    {
        var (code, output) = await RunAsync(TimeSpan.FromSeconds(30), "status", service);
        if (output.Contains($"{service}: running", StringComparison.Ordinal))
            return;
        string message = $"{service} is not run by scripts/services.sh ({output.Trim()}, exit {code}); this test stops and restarts it, " +
                         "so it needs the services that scripts/test.sh starts.";
        if (TestServices.AllowMissing)
            throw new SkipTestException(message);
        throw new InvalidOperationException(message);
    }

    /// <summary>Runs <c>scripts/services.sh</c> with <paramref name="arguments"/>; returns the exit code and the output.</summary>
    public static async Task<(int Code, string Output)> RunAsync(TimeSpan timeout, params string[] arguments)
    {
        var start = new ProcessStartInfo("bash")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = RepositoryRoot,
        };
        start.ArgumentList.Add(Path.Combine(RepositoryRoot, "scripts", "services.sh"));
        foreach (var a in arguments)
            start.ArgumentList.Add(a);
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        using var cancel = new CancellationTokenSource(timeout);
        try
        {
            await process.WaitForExitAsync(cancel.Token);
        }
        catch (OperationCanceledException)
        {
            process.Kill(entireProcessTree: true);
            return (-1, $"scripts/services.sh {string.Join(' ', arguments)} timed out after {timeout.TotalSeconds:F0} s\n{await stderr}");
        }
        return (process.ExitCode, await stdout + await stderr);
    }

    /// <summary>Runs the script and fails the test on a non-zero exit.</summary>
    public static async Task RunOrFailAsync(params string[] arguments)
    {
        var (code, output) = await RunAsync(TimeSpan.FromSeconds(180), arguments);
        Assert.True(code == 0, $"scripts/services.sh {string.Join(' ', arguments)} exited with {code}:\n{output}");
    }
}

/// <summary>Serialises the tests that stop or restart the shared RabbitMQ and Azurite: they run alone, after every
/// test that may run in parallel (xunit runs collections with DisableParallelization on their own).</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class DisruptiveCollection
{
    public const string Name = "Disruptive";
}
