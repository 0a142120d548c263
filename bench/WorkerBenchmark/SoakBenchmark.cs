using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using EraserWorker.Contracts;
using EraserWorker.Storage;
using EraserWorker.Storage.Blobs;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace EraserWorker.Benchmarks;

/// <summary>
/// Many requests over a long life (issue 11 §3): N removal requests through one worker process on RabbitMQ and the folder
/// store, for one adapter. The requests remove samples drawn from a small pool, so the cumulative edit set stops growing
/// after the first few hundred requests and what is left to grow is the history itself: the throughput of the last 10 %
/// of the requests is compared with that of the first 10 %, and the size of the versions' manifests likewise.
/// All requests are queued before the timed worker starts (a first start declares the topology), so no publisher competes
/// with the worker for the cores while the first 10 % are measured.
/// </summary>
public static class SoakBenchmark
{
    public static async Task<int> RunAsync(string[] args)
    {
        int requests = WorkerBenchmark.IntArg(args, "--requests", 100_000);
        int samples = WorkerBenchmark.IntArg(args, "--samples", 2000);
        int parameters = WorkerBenchmark.IntArg(args, "--parameters", 4096);
        int pool = WorkerBenchmark.IntArg(args, "--pool", 50);
        string rabbit = WorkerBenchmark.Arg(args, "--rabbit") ?? Environment.GetEnvironmentVariable("ERASER_TEST_RABBITMQ") ?? "amqp://guest:guest@127.0.0.1:5672/";
        string management = WorkerBenchmark.Arg(args, "--management") ?? "http://127.0.0.1:15672";
        string root = Path.Combine(Path.GetTempPath(), "eraser-soak", Guid.NewGuid().ToString("N")[..8]);
        string vhost = "soak-" + Guid.NewGuid().ToString("N")[..8];
        const string adapterId = "bench/soak";

        using var http = new HttpClient { BaseAddress = new Uri(management) };
        http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String("guest:guest"u8.ToArray()));
        (await http.PutAsync($"/api/vhosts/{vhost}", null)).EnsureSuccessStatusCode();
        (await http.PutAsync($"/api/permissions/{vhost}/guest",
            new StringContent("{\"configure\":\".*\",\"write\":\".*\",\"read\":\".*\"}", Encoding.UTF8, "application/json"))).EnsureSuccessStatusCode();
        Process? worker = null;
        try
        {
            string source = Path.Combine(root, "source");
            WorkerBenchmark.WriteSyntheticAdapter(source, samples, parameters);
            var store = new AdapterStore(new FileSystemBlobStore(Path.Combine(root, "store")));
            await store.RegisterAsync(adapterId, Path.Combine(source, "adapter"), Path.Combine(source, "cache"));
            var storage = new Dictionary<string, string>
            {
                ["Eraser__Storage__Kind"] = "FileSystem",
                ["Eraser__Storage__Root"] = Path.Combine(root, "store"),
            };
            int port = WorkerBenchmark.FreePort();
            // The first start only declares the exchanges and the durable request queue; the requests wait there for the second.
            worker = WorkerBenchmark.StartWorker(rabbit, vhost, port, batching: true, warmAdapters: 1, storage);
            await WorkerBenchmark.WaitReadyAsync(worker, port);
            worker.Kill(entireProcessTree: true);
            await worker.WaitForExitAsync();

            var factory = new ConnectionFactory { Uri = new Uri(new Uri(rabbit), Uri.EscapeDataString(vhost)) };
            await using var connection = await factory.CreateConnectionAsync();
            await using var channel = await connection.CreateChannelAsync();
            var queue = await channel.QueueDeclareAsync("", durable: false, exclusive: true, autoDelete: true);
            await channel.QueueBindAsync(queue.QueueName, ExchangeNames.UnlearningCompleted, "");
            await channel.QueueBindAsync(queue.QueueName, ExchangeNames.UnlearningFailed, "");
            var clock = new Stopwatch();
            var completedAt = new double[requests];
            int completed = 0, failed = 0;
            var done = new TaskCompletionSource();
            var consumer = new AsyncEventingBasicConsumer(channel);
            consumer.ReceivedAsync += (_, delivery) =>
            {
                using var json = JsonDocument.Parse(delivery.Body);
                if (json.RootElement.TryGetProperty("version", out JsonElement _))
                {
                    int k = Interlocked.Increment(ref completed) - 1;
                    if (k < requests)
                        completedAt[k] = clock.Elapsed.TotalSeconds;
                }
                else
                {
                    Interlocked.Increment(ref failed);
                }
                if (completed + failed >= requests)
                    done.TrySetResult();
                return Task.CompletedTask;
            };
            await channel.BasicConsumeAsync(queue.QueueName, autoAck: true, consumer);

            await using var publisher = await connection.CreateChannelAsync();
            var properties = new BasicProperties { ContentType = "application/json", DeliveryMode = DeliveryModes.Persistent };
            var random = new Random(1);
            for (int i = 0; i < requests; i++)
            {
                var request = new UnlearningRequested($"soak-{i:D6}", adapterId, UnlearningTasks.Remove, [$"sample-{random.Next(pool):D5}"]);
                await publisher.BasicPublishAsync(ExchangeNames.UnlearningRequested, "", false, properties, JsonSerializer.SerializeToUtf8Bytes(request, ContractJson.Options));
                if (i % 10_000 == 9_999)
                    Console.Error.WriteLine($"published {i + 1:N0}");
            }

            clock.Start();
            worker = WorkerBenchmark.StartWorker(rabbit, vhost, port, batching: true, warmAdapters: 1, storage);
            while (!done.Task.IsCompleted)
            {
                if (await Task.WhenAny(done.Task, Task.Delay(TimeSpan.FromSeconds(30))) != done.Task)
                    Console.Error.WriteLine($"[{clock.Elapsed.TotalSeconds,7:F1}s] completed {Volatile.Read(ref completed):N0} of {requests:N0}, failed {Volatile.Read(ref failed)}");
                if (worker.HasExited)
                    throw new InvalidOperationException($"the worker exited with {worker.ExitCode}");
            }

            int tenth = requests / 10;
            double Rate(int first) => tenth / (completedAt[first + tenth - 1] - (first == 0 ? completedAt[0] : completedAt[first - 1]));
            double firstRate = Rate(0), lastRate = Rate(requests - tenth);
            var versions = await store.ListVersionsAsync(adapterId);
            var sizes = new List<long>();
            foreach (int v in versions.Skip(1))
                sizes.Add((await store.ReadManifestAsync(adapterId, v))!.ToUtf8Json().Length);
            int vTenth = Math.Max(1, sizes.Count / 10);
            double firstSize = sizes.Take(vTenth).Average(), lastSize = sizes.TakeLast(vTenth).Average();

            Console.WriteLine($"Soak: {requests:N0} removal requests (samples from a pool of {pool}) through one worker, RabbitMQ + folder store; adapter n = {samples}, P = {parameters:N0}; {Environment.ProcessorCount} cores");
            Console.WriteLine($"  completed {completed:N0}, failed {failed}, versions {versions.Count - 1:N0}, wall {completedAt[requests - 1]:F0} s");
            Console.WriteLine($"  throughput first 10 %: {firstRate:F1} req/s; last 10 %: {lastRate:F1} req/s; last / first = {lastRate / firstRate:F3}");
            Console.WriteLine($"  manifest bytes first 10 % of versions: {firstSize:F0}; last 10 %: {lastSize:F0}; last / first = {lastSize / firstSize:F3}");
            return failed == 0 && completed == requests ? 0 : 1;
        }
        finally
        {
            if (worker is not null && !worker.HasExited)
            {
                worker.Kill(entireProcessTree: true);
                await worker.WaitForExitAsync();
            }
            await http.DeleteAsync($"/api/vhosts/{vhost}");
            try
            {
                Directory.Delete(root, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }
}
