using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Cli.Tests;
using EraserWorker.Tests.Infrastructure;
using Xunit.Abstractions;

namespace EraserWorker.Tests.Worker;

/// <summary>
/// Text replacements end to end over the real RabbitMQ and Azurite: the worker as a process, the adapter registered
/// with its tiny LLaMA in a blob container, one correction published as raw JSON by Python's pika and one by
/// <c>eraser submit --replacements-jsonl</c>; each version is held to <c>eraser unlearn</c> with the replacement set
/// <c>eraser cache build</c> writes for the same texts.
/// </summary>
[Collection(CliCollection.Name)]
public sealed class TextReplacementRabbitMqTests(TinyLlamaWorld world, ITestOutputHelper output) : IClassFixture<TinyLlamaWorld>
{
    private const string AdapterId = "tenant-a/tiny-llama";
    private static readonly TimeSpan EventTimeout = TimeSpan.FromSeconds(120);

    /// <summary>publish.py AMQP_URL EXCHANGE REQUEST_ID ADAPTER_ID TASK (ID PROMPT RESPONSE)...: the body is built and
    /// serialised by Python's json module.</summary>
    private const string PikaPublisher = """
        import json, sys
        import pika

        url, exchange, request_id, adapter_id, task = sys.argv[1:6]
        rest = sys.argv[6:]
        replacements = [{"id": rest[i], "prompt": rest[i + 1], "response": rest[i + 2]} for i in range(0, len(rest), 3)]
        body = json.dumps({"requestId": request_id, "adapterId": adapter_id, "task": task,
                           "sampleIds": [r["id"] for r in replacements], "replacements": replacements}).encode("utf-8")
        connection = pika.BlockingConnection(pika.URLParameters(url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(exchange=exchange, routing_key="", body=body,
                              properties=pika.BasicProperties(content_type="application/json", delivery_mode=2))
        connection.close()
        print("published " + body.decode("utf-8"))
        """;

    [ServiceFact]
    public async Task Text_corrections_from_pika_and_eraser_submit_equal_eraser_unlearn()
    {
        await using var bed = await WorkerTestBed.CreateAsync(output);
        await bed.Store.RegisterAsync(AdapterId, world.AdapterDir, world.CacheDir, world.ModelDir);
        await bed.StartWorkerAsync();
        var broker = await bed.ConnectBrokerAsync();

        // 1. correctResponse, raw JSON from pika.
        var fix = new TextReplacement("s03", world.Samples[3].Prompt, " moon über the river");
        string published = await bed.RunPythonAsync(PikaPublisher,
            [bed.VirtualHost.AmqpUri, ExchangeNames.UnlearningRequested, "py-fix-1", AdapterId, UnlearningTasks.CorrectResponse, fix.Id, fix.Prompt, fix.Response]);
        bed.Log(published.Trim());
        var first = (await broker.WaitCompletedAsync(["py-fix-1"], EventTimeout, bed.Diagnostics)).Single();
        Assert.Equal(1, first.Version);

        // 2. modifyQuery with `eraser submit --replacements-jsonl … --wait`.
        var query = new TextReplacement("s04", "question about the bird", world.Samples[4].Response);
        string jsonl = Path.Combine(bed.Temp.Path, "fix.jsonl");
        await File.WriteAllTextAsync(jsonl, TinyLlamaWorld.Line(query) + "\n");
        string settings = CliHarness.WriteSettings(bed.Temp.Path, new JsonObject
        {
            ["Transport"] = new JsonObject
            {
                ["Kind"] = "RabbitMq",
                ["Host"] = bed.VirtualHost.Host,
                ["Port"] = bed.VirtualHost.Port,
                ["VirtualHost"] = bed.VirtualHost.Name,
                ["Username"] = bed.VirtualHost.Username,
                ["Password"] = bed.VirtualHost.Password,
            },
        });
        var submitted = await Task.Run(() => CliHarness.Run("submit", "--adapter-id", AdapterId, "--task", UnlearningTasks.ModifyQuery,
            "--replacements-jsonl", jsonl, "--request-id", "cli-fix-2", "--wait", "--timeout", "120", "--config", settings));
        Assert.True(submitted.Exit == 0, submitted + "\n" + bed.Diagnostics());
        Assert.Equal(2, (int)JsonNode.Parse(submitted.Out)!["version"]!);
        Assert.Empty(broker.Failed);

        // The versions against eraser unlearn with the sets eraser cache build writes for the same texts.
        string set1 = world.BuildReplacementSet([fix], Path.Combine(bed.Temp.Path, "oracle-set-1"));
        string both = world.BuildReplacementSet([fix, query], Path.Combine(bed.Temp.Path, "oracle-set-12"));
        double r1 = world.AssertSameUpdate(world.Unlearn(Path.Combine(bed.Temp.Path, "oracle-v1"), [], set1), world.Theta(await bed.DownloadAsync(1, AdapterId)), 1e-5, "version 1");
        double r2 = world.AssertSameUpdate(world.Unlearn(Path.Combine(bed.Temp.Path, "oracle-v2"), [], both), world.Theta(await bed.DownloadAsync(2, AdapterId)), 1e-4, "version 2");
        bed.Log($"vs eraser unlearn: version 1 {r1:E2}, version 2 {r2:E2} (relative)");
    }
}
