using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Azure.Storage.Blobs;
using EraserWorker.Contracts;
using EraserWorker.Core.Formats.GradientCaches;
using EraserWorker.Core.Formats.Safetensors;
using EraserWorker.Storage;
using EraserWorker.Storage.Blobs;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace EraserWorker.Benchmarks;

/// <summary>
/// Requests per second and publish-to-completion latency of the real worker process, fed through a real
/// RabbitMQ (raw JSON, as any client publishes) and storing versions in Azurite, for one adapter and for
/// ten, with batching on and off. Each scenario gets its own virtual host, container and worker process.
/// </summary>
public static class WorkerBenchmark
{
    private const string DevStorage = "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;AccountKey=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==;BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;";

    private sealed record Settings(int Requests, int Samples, int Parameters, string Rabbit, string Management, string Azurite);

    private sealed record Scenario(string Name, int Adapters, bool Batching);

    private sealed record Result(Scenario Scenario, int Completed, int Failed, double WallSeconds, double P50, double P99,
        double SolveSeconds, int Versions);

    public static async Task<int> RunAsync(string[] args)
    {
        var s = new Settings(
            Requests: IntArg(args, "--requests", 500),
            Samples: IntArg(args, "--samples", 1000),
            Parameters: IntArg(args, "--parameters", 16384),
            Rabbit: Arg(args, "--rabbit") ?? Environment.GetEnvironmentVariable("ERASER_TEST_RABBITMQ") ?? "amqp://guest:guest@127.0.0.1:5672/",
            Management: Arg(args, "--management") ?? "http://127.0.0.1:15672",
            Azurite: Arg(args, "--azurite") ?? Environment.GetEnvironmentVariable("ERASER_TEST_AZURITE") ?? DevStorage);
        Scenario[] scenarios =
        [
            new("1 adapter, batching on", 1, true),
            new("1 adapter, batching off", 1, false),
            new("10 adapters, batching on", 10, true),
            new("10 adapters, batching off", 10, false),
        ];
        var only = Arg(args, "--scenario");
        var results = new List<Result>();
        string source = Path.Combine(Path.GetTempPath(), "eraser-worker-bench", "source");
        WriteSyntheticAdapter(source, s.Samples, s.Parameters);
        foreach (var scenario in scenarios.Where(x => only is null || x.Name.StartsWith(only, StringComparison.OrdinalIgnoreCase)))
        {
            Console.Error.WriteLine($"== {scenario.Name}: {s.Requests} removal requests, n = {s.Samples}, P = {s.Parameters}");
            results.Add(await RunScenarioAsync(s, scenario, source));
        }

        Console.WriteLine($"Worker end to end: {s.Requests} removal requests through RabbitMQ + Azurite; adapter n = {s.Samples} cached samples, P = {s.Parameters:N0} (F16 cache); one worker process, {Environment.ProcessorCount} cores");
        Console.WriteLine("scenario                     completed  failed  versions  req/s    p50 latency  p99 latency  solve share  outside solve");
        foreach (var r in results)
            Console.WriteLine($"{r.Scenario.Name,-28} {r.Completed,9} {r.Failed,7} {r.Versions,9} {r.Completed / r.WallSeconds,6:F1} {r.P50,10:F3} s {r.P99,10:F3} s {r.SolveSeconds / r.WallSeconds,10:P0} {1 - r.SolveSeconds / r.WallSeconds,12:P0}");
        return results.All(r => r.Completed == s.Requests) ? 0 : 1;
    }

    private static async Task<Result> RunScenarioAsync(Settings s, Scenario scenario, string source)
    {
        string vhost = "bench-" + Guid.NewGuid().ToString("N")[..8];
        string container = "bench-" + Guid.NewGuid().ToString("N")[..12];
        using var http = new HttpClient { BaseAddress = new Uri(s.Management) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String("guest:guest"u8.ToArray()));
        (await http.PutAsync($"/api/vhosts/{vhost}", null)).EnsureSuccessStatusCode();
        (await http.PutAsync($"/api/permissions/{vhost}/guest",
            new StringContent("{\"configure\":\".*\",\"write\":\".*\",\"read\":\".*\"}", Encoding.UTF8, "application/json"))).EnsureSuccessStatusCode();
        var containerClient = new BlobContainerClient(s.Azurite, container);
        Process? worker = null;
        try
        {
            await containerClient.CreateIfNotExistsAsync();
            var store = new AdapterStore(new AzureBlobStore(containerClient));
            var adapters = Enumerable.Range(0, scenario.Adapters).Select(i => $"bench/adapter-{i:D2}").ToArray();
            foreach (var id in adapters)
                await store.RegisterAsync(id, Path.Combine(source, "adapter"), Path.Combine(source, "cache"));

            int port = FreePort();
            worker = StartWorker(s, vhost, container, port, scenario.Batching, scenario.Adapters);
            await WaitReadyAsync(worker, port);

            var brokerUri = new Uri(new Uri(s.Rabbit), Uri.EscapeDataString(vhost));
            var factory = new ConnectionFactory { Uri = brokerUri };
            await using var connection = await factory.CreateConnectionAsync();
            await using var channel = await connection.CreateChannelAsync();
            var queue = await channel.QueueDeclareAsync("", durable: false, exclusive: true, autoDelete: true);
            await channel.QueueBindAsync(queue.QueueName, ExchangeNames.UnlearningCompleted, "");
            await channel.QueueBindAsync(queue.QueueName, ExchangeNames.UnlearningFailed, "");

            var clock = Stopwatch.StartNew();
            var published = new ConcurrentDictionary<string, double>();
            var latencies = new ConcurrentBag<double>();
            var versions = new ConcurrentDictionary<(string, int), double>();
            int completed = 0, failed = 0;
            var done = new TaskCompletionSource();
            var consumer = new AsyncEventingBasicConsumer(channel);
            consumer.ReceivedAsync += (_, delivery) =>
            {
                double now = clock.Elapsed.TotalSeconds;
                using var json = JsonDocument.Parse(delivery.Body);
                var root = json.RootElement;
                string requestId = root.GetProperty("requestId").GetString()!;
                if (root.TryGetProperty("version", out var version))
                {
                    versions.TryAdd((root.GetProperty("adapterId").GetString()!, version.GetInt32()),
                        root.GetProperty("solver").GetProperty("seconds").GetDouble());
                    if (published.TryGetValue(requestId, out double at))
                        latencies.Add(now - at);
                    Interlocked.Increment(ref completed);
                }
                else
                {
                    Interlocked.Increment(ref failed);
                }
                if (completed + failed >= s.Requests)
                    done.TrySetResult();
                return Task.CompletedTask;
            };
            await channel.BasicConsumeAsync(queue.QueueName, autoAck: true, consumer);

            await using var publisher = await connection.CreateChannelAsync();
            var properties = new BasicProperties { ContentType = "application/json", DeliveryMode = DeliveryModes.Persistent };
            var random = new Random(1);
            double start = clock.Elapsed.TotalSeconds;
            for (int i = 0; i < s.Requests; i++)
            {
                string requestId = $"bench-{i:D5}";
                var request = new UnlearningRequested(requestId, adapters[i % adapters.Length], UnlearningTasks.Remove,
                    [$"sample-{random.Next(s.Samples):D5}"]);
                published[requestId] = clock.Elapsed.TotalSeconds;
                await publisher.BasicPublishAsync(ExchangeNames.UnlearningRequested, "", false, properties,
                    JsonSerializer.SerializeToUtf8Bytes(request, ContractJson.Options));
            }
            var finished = await Task.WhenAny(done.Task, Task.Delay(TimeSpan.FromMinutes(10)));
            double wall = clock.Elapsed.TotalSeconds - start;
            if (finished != done.Task)
                Console.Error.WriteLine($"   timed out: {completed} completed, {failed} failed of {s.Requests}");
            var sorted = latencies.OrderBy(x => x).ToArray();
            var result = new Result(scenario, completed, failed, wall, Percentile(sorted, 0.50), Percentile(sorted, 0.99),
                versions.Values.Sum(), versions.Count);
            Console.Error.WriteLine($"   {completed} completed in {wall:F1} s, {versions.Count} versions");
            return result;
        }
        finally
        {
            if (worker is not null && !worker.HasExited)
            {
                worker.Kill(entireProcessTree: true);
                await worker.WaitForExitAsync();
            }
            await http.DeleteAsync($"/api/vhosts/{vhost}");
            await containerClient.DeleteIfExistsAsync();
        }
    }

    private static Process StartWorker(Settings s, string vhost, string container, int port, bool batching, int warmAdapters) =>
        StartWorker(s.Rabbit, vhost, port, batching, warmAdapters, new Dictionary<string, string>
        {
            ["Eraser__Storage__Kind"] = "AzureBlob",
            ["Eraser__Storage__ConnectionString"] = s.Azurite,
            ["Eraser__Storage__Container"] = container,
        });

    /// <summary>The worker process on RabbitMQ (virtual host <paramref name="vhost"/>) with the given storage settings.</summary>
    internal static Process StartWorker(string rabbit, string vhost, int port, bool batching, int warmAdapters, IReadOnlyDictionary<string, string> storage)
    {
        var broker = new Uri(rabbit);
        var userInfo = broker.UserInfo.Split(':');
        var start = new ProcessStartInfo("dotnet", Path.Combine(AppContext.BaseDirectory, "EraserWorker.dll"))
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            WorkingDirectory = AppContext.BaseDirectory,
        };
        var env = start.Environment;
        env["Eraser__Transport__Kind"] = "RabbitMq";
        env["Eraser__Transport__Host"] = broker.Host;
        env["Eraser__Transport__Port"] = broker.Port.ToString();
        env["Eraser__Transport__Username"] = Uri.UnescapeDataString(userInfo[0]);
        env["Eraser__Transport__Password"] = Uri.UnescapeDataString(userInfo.ElementAtOrDefault(1) ?? "");
        env["Eraser__Transport__VirtualHost"] = vhost;
        foreach (var (key, value) in storage)
            env[key] = value;
        env["Eraser__Http__Port"] = port.ToString();
        env["Eraser__Worker__WorkDirectory"] = Path.Combine(Path.GetTempPath(), "eraser-worker-bench", vhost);
        env["Eraser__Worker__BatchMessageLimit"] = batching ? "64" : "1";
        env["Eraser__Worker__BatchTimeLimit"] = batching ? "00:00:00.200" : "00:00:00.001";
        // Every adapter stays warm: with fewer slots than adapters each batch would reload one (measured: 3× slower).
        env["Eraser__Worker__MaxWarmAdapters"] = Math.Max(4, warmAdapters).ToString();
        // One batch at a time, so that "share of time in the solve" is a share of one worker's time.
        env["Eraser__Worker__BatchConcurrencyLimit"] = "1";
        env["Logging__LogLevel__Default"] = "Warning";
        var process = Process.Start(start)!;
        process.OutputDataReceived += (_, e) => { if (e.Data is not null) Console.Error.WriteLine("   worker: " + e.Data); };
        process.ErrorDataReceived += (_, e) => { if (e.Data is not null) Console.Error.WriteLine("   worker: " + e.Data); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        return process;
    }

    internal static async Task WaitReadyAsync(Process worker, int port)
    {
        using var client = new HttpClient();
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (DateTime.UtcNow < deadline)
        {
            if (worker.HasExited)
                throw new InvalidOperationException($"The worker exited with code {worker.ExitCode} before it was ready.");
            try
            {
                if ((await client.GetAsync($"http://127.0.0.1:{port}/health/ready")).StatusCode == HttpStatusCode.OK)
                    return;
            }
            catch (HttpRequestException)
            {
            }
            await Task.Delay(200);
        }
        throw new TimeoutException("The worker did not become ready within 60 s.");
    }

    /// <summary>A ridge-like adapter: two LoRA tensors and Gaussian curvature rows (values carry no meaning here).</summary>
    internal static void WriteSyntheticAdapter(string folder, int samples, int parameters)
    {
        if (Directory.Exists(folder))
            Directory.Delete(folder, recursive: true);
        int half = parameters / 2 / 8;
        var specs = new List<ParameterSpec>
        {
            new("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", [8, half]),
            new("base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight", [parameters / 8 - half, 8]),
        };
        int p = specs.Sum(x => (int)x.Count);
        var random = new Random(3);
        Directory.CreateDirectory(Path.Combine(folder, "adapter"));
        File.WriteAllText(Path.Combine(folder, "adapter", "adapter_config.json"), "{\"peft_type\":\"LORA\",\"r\":8,\"lora_alpha\":16}");
        var tensors = specs.Select(spec =>
        {
            var bytes = new byte[spec.Count * 4];
            for (int k = 0; k < spec.Count; k++)
                BitConverter.TryWriteBytes(bytes.AsSpan(4 * k), (float)(random.NextDouble() * 0.02 - 0.01));
            return (spec.Name, "F32", spec.Shape, (ReadOnlyMemory<byte>)bytes);
        }).ToList();
        using (var file = File.Create(Path.Combine(folder, "adapter", "adapter_model.safetensors")))
            SafetensorsWriter.Write(file, tensors);
        using var writer = GradientCacheWriter.Create(Path.Combine(folder, "cache"), specs, 1.0, "F16", true, 512);
        var c = new float[p];
        var g = new float[p];
        for (int i = 0; i < samples; i++)
        {
            float residual = (float)(random.NextDouble() - 0.5);
            for (int j = 0; j < p; j++)
            {
                c[j] = (float)(random.NextDouble() * 2 - 1);
                g[j] = residual * c[j];
            }
            writer.Append($"sample-{i:D5}", g, c);
        }
        writer.Complete();
    }

    internal static double Percentile(double[] sorted, double q) =>
        sorted.Length == 0 ? double.NaN : sorted[Math.Min(sorted.Length - 1, (int)Math.Ceiling(q * sorted.Length) - 1)];

    internal static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    internal static string? Arg(string[] args, string name)
    {
        int i = Array.IndexOf(args, name);
        return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
    }

    internal static int IntArg(string[] args, string name, int fallback) => Arg(args, name) is { } v ? int.Parse(v) : fallback;
}
