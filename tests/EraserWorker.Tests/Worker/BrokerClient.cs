using System.Diagnostics;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Contracts;
using EraserWorker.Tests.Infrastructure;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;

namespace EraserWorker.Tests.Worker;

/// <summary>One message taken from an outgoing exchange.</summary>
public sealed record BrokerEvent(string Exchange, string? ContentType, byte[] Body, TimeSpan At)
{
    public string Text => Encoding.UTF8.GetString(Body);
}

/// <summary>
/// What a non-.NET system sees of the worker, through RabbitMQ.Client only (no MassTransit): an exclusive,
/// server-named queue bound to each outgoing fanout exchange of SPEC §3, whose bodies are read as plain JSON
/// (content type application/json, camelCase, parsed with the contracts' strict options), and a publisher of raw
/// request bodies to <c>eraser.unlearning-requested</c>.
/// </summary>
public sealed class BrokerClient : IAsyncDisposable
{
    public static readonly string[] OutgoingExchanges =
        [ExchangeNames.UnlearningCompleted, ExchangeNames.UnlearningFailed, ExchangeNames.AdapterVersionPublished];

    private readonly IConnection _connection;
    private readonly IChannel _consumeChannel;
    private readonly IChannel _publishChannel;
    private readonly SemaphoreSlim _publishGate = new(1, 1);
    private readonly List<BrokerEvent> _events = [];
    private readonly SemaphoreSlim _arrived = new(0);
    private readonly Stopwatch _clock = Stopwatch.StartNew();

    private BrokerClient(IConnection connection, IChannel consumeChannel, IChannel publishChannel)
    {
        _connection = connection;
        _consumeChannel = consumeChannel;
        _publishChannel = publishChannel;
    }

    /// <summary>Connects to the virtual host and subscribes to the three outgoing exchanges, which must already exist
    /// (passive declares: the worker declares them at start-up, SPEC §3).</summary>
    public static async Task<BrokerClient> ConnectAsync(RabbitMqVirtualHost vhost)
    {
        var connection = await vhost.ConnectAsync("eraser-tests-events");
        var consume = await connection.CreateChannelAsync();
        var publish = await connection.CreateChannelAsync();
        var client = new BrokerClient(connection, consume, publish);
        foreach (var exchange in OutgoingExchanges)
        {
            try
            {
                await consume.ExchangeDeclarePassiveAsync(exchange);
            }
            catch (RabbitMQ.Client.Exceptions.OperationInterruptedException e)
            {
                throw new Xunit.Sdk.XunitException($"The worker did not declare the exchange '{exchange}' at start-up (SPEC §3): {e.Message}");
            }
            var queue = await consume.QueueDeclareAsync("", durable: false, exclusive: true, autoDelete: true);
            await consume.QueueBindAsync(queue.QueueName, exchange, "");
            var consumer = new AsyncEventingBasicConsumer(consume);
            string name = exchange;
            consumer.ReceivedAsync += (_, delivery) =>
            {
                var e = new BrokerEvent(name, delivery.BasicProperties.ContentType, delivery.Body.ToArray(), client._clock.Elapsed);
                lock (client._events)
                    client._events.Add(e);
                client._arrived.Release();
                return Task.CompletedTask;
            };
            await consume.BasicConsumeAsync(queue.QueueName, autoAck: true, consumer);
        }
        return client;
    }

    /// <summary>Every event received so far, in arrival order.</summary>
    public IReadOnlyList<BrokerEvent> All
    {
        get
        {
            lock (_events)
                return [.. _events];
        }
    }

    /// <summary>Publishes a raw body to <c>eraser.unlearning-requested</c> (persistent; content type as given).</summary>
    public async Task PublishRawAsync(byte[] body, string? contentType = "application/json")
    {
        var properties = new BasicProperties { ContentType = contentType, DeliveryMode = DeliveryModes.Persistent };
        await _publishGate.WaitAsync();
        try
        {
            await _publishChannel.BasicPublishAsync(ExchangeNames.UnlearningRequested, "", mandatory: false, properties, body);
        }
        finally
        {
            _publishGate.Release();
        }
    }

    /// <summary>Publishes a request as plain camelCase JSON, as any AMQP client would.</summary>
    public Task PublishAsync(UnlearningRequested request) => PublishRawAsync(ContractJson.SerializeToUtf8Bytes(request));

    /// <summary>The parsed events of one exchange received so far.</summary>
    public List<T> Events<T>(string exchange) => All.Where(e => e.Exchange == exchange).Select(Parse<T>).ToList();

    public List<UnlearningCompleted> Completed => Events<UnlearningCompleted>(ExchangeNames.UnlearningCompleted);

    public List<UnlearningFailed> Failed => Events<UnlearningFailed>(ExchangeNames.UnlearningFailed);

    public List<AdapterVersionPublished> Published => Events<AdapterVersionPublished>(ExchangeNames.AdapterVersionPublished);

    /// <summary>Waits until at least <paramref name="count"/> events of <paramref name="exchange"/> match
    /// <paramref name="filter"/>; fails with <paramref name="what"/>, what did arrive and <paramref name="diagnostics"/>
    /// on timeout.</summary>
    public async Task<List<T>> WaitAsync<T>(string exchange, Func<T, bool> filter, int count, TimeSpan timeout, string what,
        Func<string>? diagnostics = null)
    {
        var watch = Stopwatch.StartNew();
        while (true)
        {
            var matching = Events<T>(exchange).Where(filter).ToList();
            if (matching.Count >= count)
                return matching;
            var left = timeout - watch.Elapsed;
            if (left <= TimeSpan.Zero)
            {
                Assert.Fail($"Timed out after {timeout.TotalSeconds:F0} s waiting for {what} on '{exchange}': {matching.Count} of {count} arrived.\n" +
                            $"Events received ({All.Count}):\n{Describe()}\n{diagnostics?.Invoke()}");
            }
            await _arrived.WaitAsync(left < TimeSpan.FromMilliseconds(250) ? left : TimeSpan.FromMilliseconds(250));
        }
    }

    public Task<List<UnlearningCompleted>> WaitCompletedAsync(IReadOnlyCollection<string> requestIds, TimeSpan timeout, Func<string>? diagnostics = null) =>
        WaitDistinctAsync<UnlearningCompleted>(ExchangeNames.UnlearningCompleted, c => c.RequestId, requestIds, timeout, "UnlearningCompleted", diagnostics);

    public Task<List<UnlearningFailed>> WaitFailedAsync(IReadOnlyCollection<string> requestIds, TimeSpan timeout, Func<string>? diagnostics = null) =>
        WaitDistinctAsync<UnlearningFailed>(ExchangeNames.UnlearningFailed, f => f.RequestId, requestIds, timeout, "UnlearningFailed", diagnostics);

    /// <summary>Waits for one event per id (at least); returns the first event of each id, in the order of
    /// <paramref name="ids"/>.</summary>
    private async Task<List<T>> WaitDistinctAsync<T>(string exchange, Func<T, string> key, IReadOnlyCollection<string> ids, TimeSpan timeout, string what,
        Func<string>? diagnostics)
    {
        var wanted = ids.ToHashSet(StringComparer.Ordinal);
        var watch = Stopwatch.StartNew();
        while (true)
        {
            var first = new Dictionary<string, T>(StringComparer.Ordinal);
            foreach (var e in Events<T>(exchange))
                if (wanted.Contains(key(e)))
                    first.TryAdd(key(e), e);
            if (first.Count == wanted.Count)
                return ids.Select(id => first[id]).ToList();
            var left = timeout - watch.Elapsed;
            if (left <= TimeSpan.Zero)
            {
                Assert.Fail($"Timed out after {timeout.TotalSeconds:F0} s waiting for {what} of {wanted.Count} request(s); missing: " +
                            $"{string.Join(", ", wanted.Except(first.Keys).Take(20))}.\nEvents received ({All.Count}):\n{Describe()}\n{diagnostics?.Invoke()}");
            }
            await _arrived.WaitAsync(left < TimeSpan.FromMilliseconds(250) ? left : TimeSpan.FromMilliseconds(250));
        }
    }

    /// <summary>Waits <paramref name="quiet"/> and returns the events that arrived meanwhile (to check that nothing
    /// more comes).</summary>
    public async Task<List<BrokerEvent>> CollectForAsync(TimeSpan quiet)
    {
        int before = All.Count;
        await Task.Delay(quiet);
        return All.Skip(before).ToList();
    }

    /// <summary>One line per event received, for failure messages.</summary>
    public string Describe() =>
        string.Join('\n', All.Select(e => $"  [{e.At.TotalSeconds,6:F2}s] {e.Exchange} ({e.ContentType}): {Cut(e.Text, 400)}"));

    private static string Cut(string s, int max) => s.Length <= max ? s : s[..max] + "…";

    /// <summary>Parses an event body as SPEC §3 plain JSON: content type application/json, a JSON object with
    /// camelCase property names, valid for the contract under the strict shared options (required properties
    /// present, no nulls where the contract has none).</summary>
    public static T Parse<T>(BrokerEvent e)
    {
        Assert.True(e.ContentType == "application/json",
            $"An event on '{e.Exchange}' has content type '{e.ContentType}', not application/json (SPEC §3): {Cut(e.Text, 400)}");
        JsonNode? node;
        try
        {
            node = JsonNode.Parse(e.Body);
        }
        catch (JsonException ex)
        {
            throw new Xunit.Sdk.XunitException($"An event on '{e.Exchange}' is not JSON ({ex.Message}): {Cut(e.Text, 400)}");
        }
        if (node is not JsonObject obj)
            throw new Xunit.Sdk.XunitException($"An event on '{e.Exchange}' is not a JSON object: {Cut(e.Text, 400)}");
        var notCamel = obj.Select(p => p.Key).Where(k => k.Length == 0 || !char.IsLower(k[0])).ToList();
        Assert.True(notCamel.Count == 0, $"An event on '{e.Exchange}' has property names that are not camelCase ({string.Join(", ", notCamel)}): {Cut(e.Text, 400)}");
        try
        {
            return ContractJson.Deserialize<T>(e.Body);
        }
        catch (JsonException ex)
        {
            throw new Xunit.Sdk.XunitException($"An event on '{e.Exchange}' is not a valid {typeof(T).Name} ({ex.Message}): {Cut(e.Text, 400)}");
        }
    }

    /// <inheritdoc />
    public async ValueTask DisposeAsync()
    {
        try
        {
            await _consumeChannel.CloseAsync();
            await _publishChannel.CloseAsync();
            await _connection.CloseAsync();
        }
        catch (Exception e) when (e is RabbitMQ.Client.Exceptions.AlreadyClosedException or OperationCanceledException
                                      or RabbitMQ.Client.Exceptions.OperationInterruptedException or IOException)
        {
        }
        _consumeChannel.Dispose();
        _publishChannel.Dispose();
        _connection.Dispose();
        _publishGate.Dispose();
    }
}
