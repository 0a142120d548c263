extern alias cli;

using System.Text;
using System.Text.Json.Nodes;
using System.Threading.Channels;
using EraserWorker.Contracts;
using EraserWorker.Tests.Infrastructure;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;
using static EraserWorker.Cli.Tests.CliHarness;
using SubmitCommand = cli::EraserWorker.Cli.Commands.SubmitCommand;

namespace EraserWorker.Cli.Tests;

/// <summary>
/// <c>eraser submit</c> against a real RabbitMQ, each test in a fresh virtual host: the request arrives on
/// <c>eraser.unlearning-requested</c> as plain JSON (what any non-.NET client sends), and <c>--wait</c> reports the
/// completion or failure event of that request.
/// </summary>
[Collection(CliCollection.Name)]
public sealed class SubmitCommandTests : IDisposable
{
    private readonly TempDirectory _temp = new("eraser-cli-submit");

    public void Dispose() => _temp.Dispose();

    private sealed record Delivery(string Exchange, string? ContentType, DeliveryModes DeliveryMode, string Body);

    private string TransportSettings(RabbitMqVirtualHost vhost) => WriteSettings(_temp.Path, new JsonObject
    {
        ["Transport"] = new JsonObject
        {
            ["Kind"] = "RabbitMq",
            ["Host"] = vhost.Host,
            ["Port"] = vhost.Port,
            ["VirtualHost"] = vhost.Name,
            ["Username"] = vhost.Username,
            ["Password"] = vhost.Password,
        },
    });

    /// <summary>A test consumer: an exclusive queue bound to <paramref name="exchange"/>, deliveries into a channel.</summary>
    private static async Task<(IChannel Channel, ChannelReader<Delivery> Deliveries)> BindAsync(IConnection connection, string exchange,
        Func<IChannel, Delivery, Task>? onDelivery = null)
    {
        var channel = await connection.CreateChannelAsync();
        await channel.ExchangeDeclareAsync(exchange, ExchangeType.Fanout, durable: true, autoDelete: false);
        var queue = await channel.QueueDeclareAsync("", durable: false, exclusive: true, autoDelete: true);
        await channel.QueueBindAsync(queue.QueueName, exchange, "");
        var deliveries = Channel.CreateUnbounded<Delivery>();
        var consumer = new AsyncEventingBasicConsumer(channel);
        consumer.ReceivedAsync += async (_, ea) =>
        {
            var delivery = new Delivery(ea.Exchange, ea.BasicProperties.ContentType, ea.BasicProperties.DeliveryMode, Encoding.UTF8.GetString(ea.Body.Span));
            deliveries.Writer.TryWrite(delivery);
            if (onDelivery is not null)
                await onDelivery(channel, delivery);
        };
        await channel.BasicConsumeAsync(queue.QueueName, autoAck: true, consumer);
        return (channel, deliveries.Reader);
    }

    private static async Task<Delivery> NextAsync(ChannelReader<Delivery> reader)
    {
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(15));
        return await reader.ReadAsync(timeout.Token);
    }

    [ServiceFact]
    public async Task Submit_publishes_the_plain_json_request_on_the_requested_exchange()
    {
        await using var vhost = await RabbitMqVirtualHost.CreateAsync("eraser-cli");
        await using var connection = await vhost.ConnectAsync("eraser-cli-tests");
        var (channel, deliveries) = await BindAsync(connection, ExchangeNames.UnlearningRequested);
        await using var consumerChannel = channel;
        string settings = TransportSettings(vhost);

        var remove = await Task.Run(() => Run("submit", "--adapter-id", "tenant-a/support-bot", "--task", "remove",
            "--sample", "s017,s204", "--sample", "s300", "--request-id", "gdpr-2026-0042", "--config", settings));
        Assert.True(remove.Exit == 0, remove.ToString());
        Assert.Equal("gdpr-2026-0042\n", remove.Out.Replace("\r\n", "\n"));
        var delivery = await NextAsync(deliveries);
        Assert.Equal(ExchangeNames.UnlearningRequested, delivery.Exchange);
        Assert.Equal("application/json", delivery.ContentType);
        Assert.Equal(DeliveryModes.Persistent, delivery.DeliveryMode);
        Assert.Equal("""{"requestId":"gdpr-2026-0042","adapterId":"tenant-a/support-bot","task":"remove","sampleIds":["s017","s204","s300"]}""", delivery.Body);

        // Ids with commas come from a file; the request id defaults to a new GUID, printed on stdout.
        string uri = "eraser:adapters/tenant-a/support-bot/replacements/r-20260101t000000z-0123abcd";
        string ids = Path.Combine(_temp.Path, "ids.txt");
        File.WriteAllLines(ids, ["sample, with comma", "s2"]);
        var correct = await Task.Run(() => Run("submit", "--adapter-id", "tenant-a/support-bot", "--task", "correctResponse",
            "--sample-file", ids, "--replacements-uri", uri, "--config", settings));
        Assert.True(correct.Exit == 0, correct.ToString());
        string requestId = correct.Out.Trim();
        Assert.True(Guid.TryParse(requestId, out _), requestId);
        var second = await NextAsync(deliveries);
        var body = ContractJson.Deserialize<UnlearningRequested>(second.Body);
        Assert.Equal(requestId, body.RequestId);
        Assert.Equal(UnlearningTasks.CorrectResponse, body.Task);
        Assert.Equal(["sample, with comma", "s2"], body.SampleIds);
        Assert.Equal(uri, body.ReplacementsUri);
        Assert.Equal(ContractJson.Serialize(body), second.Body);
        Assert.False(deliveries.TryRead(out var extra), $"unexpected extra message {extra}");
    }

    [ServiceFact]
    public async Task Submit_fails_when_no_queue_would_receive_the_request()
    {
        await using var vhost = await RabbitMqVirtualHost.CreateAsync("eraser-cli");
        var result = await Task.Run(() => Run("submit", "--adapter-id", "a", "--task", "remove", "--sample", "s1", "--config", TransportSettings(vhost)));
        Assert.Equal(1, result.Exit);
        Assert.Contains("no queue is bound to exchange 'eraser.unlearning-requested'", result.FailureLine);
        Assert.Empty(result.Out);
    }

    [ServiceFact]
    public async Task Submit_wait_prints_the_completion_or_failure_of_its_own_request()
    {
        await using var vhost = await RabbitMqVirtualHost.CreateAsync("eraser-cli");
        await using var connection = await vhost.ConnectAsync("eraser-cli-tests");
        await using var publisher = await connection.CreateChannelAsync();
        // A fake worker: answers each request, after an event for some other request that the CLI must ignore.
        var (channel, _) = await BindAsync(connection, ExchangeNames.UnlearningRequested, async (_, delivery) =>
        {
            var request = ContractJson.Deserialize<UnlearningRequested>(delivery.Body);
            var props = new BasicProperties { ContentType = "application/json" };
            var other = new UnlearningCompleted("someone-else", request.AdapterId, 9, "file:///x/", new string('0', 64), DateTimeOffset.UnixEpoch,
                new SolverSummary("cg", 3, 0.1, 1e-9, 0));
            await publisher.BasicPublishAsync(ExchangeNames.UnlearningCompleted, "", false, props, ContractJson.SerializeToUtf8Bytes(other));
            if (request.SampleIds.Contains("unknown"))
                await publisher.BasicPublishAsync(ExchangeNames.UnlearningFailed, "", false, props, ContractJson.SerializeToUtf8Bytes(
                    new UnlearningFailed(request.RequestId, request.AdapterId, FailureCodes.UnknownSample, "Sample 'unknown' is not in the gradient cache.")));
            else
                await publisher.BasicPublishAsync(ExchangeNames.UnlearningCompleted, "", false, props, ContractJson.SerializeToUtf8Bytes(
                    new UnlearningCompleted(request.RequestId, request.AdapterId, 4, "file:///store/adapters/a/versions/000004/", new string('a', 64),
                        new DateTimeOffset(2026, 1, 2, 3, 4, 5, TimeSpan.Zero), new SolverSummary("direct", 1, 0.02, 1e-13, 0))));
        });
        await using var consumerChannel = channel;
        string settings = TransportSettings(vhost);

        var completed = await Task.Run(() => Run("submit", "--adapter-id", "a", "--task", "remove", "--sample", "s1",
            "--request-id", "wait-ok", "--wait", "--timeout", "30", "--config", settings));
        Assert.True(completed.Exit == 0, completed.ToString());
        var evt = JsonNode.Parse(completed.Out)!;
        Assert.Single(completed.Out.TrimEnd().Split('\n'));
        Assert.Equal("wait-ok", (string?)evt["requestId"]);
        Assert.Equal(4, (int)evt["version"]!);
        Assert.Equal("direct", (string?)evt["solver"]!["name"]);
        Assert.Contains("Completed: adapter a version 4", completed.Err);

        var failed = await Task.Run(() => Run("submit", "--adapter-id", "a", "--task", "remove", "--sample", "unknown",
            "--request-id", "wait-fail", "--wait", "--timeout", "30", "--config", settings));
        Assert.Equal(1, failed.Exit);
        Assert.Equal("UnknownSample", (string?)JsonNode.Parse(failed.Out)!["code"]);
        Assert.Equal("eraser: UnknownSample: Sample 'unknown' is not in the gradient cache.", failed.FailureLine);
    }

    [ServiceFact]
    public async Task Submit_wait_times_out_with_one_line()
    {
        await using var vhost = await RabbitMqVirtualHost.CreateAsync("eraser-cli");
        await using var connection = await vhost.ConnectAsync("eraser-cli-tests");
        var (channel, deliveries) = await BindAsync(connection, ExchangeNames.UnlearningRequested); // receives, never answers
        await using var consumerChannel = channel;
        var result = await Task.Run(() => Run("submit", "--adapter-id", "a", "--task", "remove", "--sample", "s1",
            "--request-id", "never", "--wait", "--timeout", "1", "--config", TransportSettings(vhost)));
        Assert.Equal(1, result.Exit);
        Assert.StartsWith("eraser: no completion or failure event for request never within 1 s", result.FailureLine);
        Assert.Empty(result.Out);
        Assert.Equal("never", ContractJson.Deserialize<UnlearningRequested>((await NextAsync(deliveries)).Body).RequestId);
    }

    [Fact]
    public void Invalid_requests_and_the_in_memory_transport_fail_before_connecting()
    {
        // Port 1: nothing listens, so reaching the broker would fail with another message.
        string closed = WriteSettings(_temp.Path, new JsonObject
        {
            ["Transport"] = new JsonObject { ["Kind"] = "RabbitMq", ["Host"] = "127.0.0.1", ["Port"] = 1 },
        });
        (string[] Args, string Expected)[] cases =
        [
            (["--adapter-id", "Tenant A", "--task", "remove", "--sample", "s1"], "eraser: invalid request: adapterId 'Tenant A' is invalid"),
            (["--adapter-id", "a", "--task", "forget", "--sample", "s1"], "eraser: invalid request: task 'forget' is unknown"),
            (["--adapter-id", "a", "--task", "remove"], "eraser: invalid request: sampleIds must contain at least one sample id."),
            (["--adapter-id", "a", "--task", "modifyQuery", "--sample", "s1"], "eraser: invalid request: replacementsUri is required for task 'modifyQuery'."),
            (["--adapter-id", "a", "--task", "remove", "--sample", "s1", "--request-id", " padded"], "eraser: invalid request: requestId ' padded' is invalid"),
        ];
        foreach (var (args, expected) in cases)
        {
            var result = Run(["submit", .. args, "--config", closed]);
            Assert.Equal(1, result.Exit);
            Assert.StartsWith(expected, result.FailureLine);
            Assert.Empty(result.Out);
        }

        var unreachable = Run("submit", "--adapter-id", "a", "--task", "remove", "--sample", "s1", "--config", closed);
        Assert.Equal(1, unreachable.Exit);
        Assert.StartsWith("eraser: cannot connect to RabbitMQ at amqp://127.0.0.1:1/", unreachable.FailureLine);

        var inMemory = Run("submit", "--adapter-id", "a", "--task", "remove", "--sample", "s1", "--config",
            WriteSettings(_temp.Path, new JsonObject { ["Transport"] = new JsonObject { ["Kind"] = "InMemory" } }));
        Assert.Equal(1, inMemory.Exit);
        Assert.Equal("eraser: " + SubmitCommand.InMemoryMessage, inMemory.FailureLine);
    }
}
