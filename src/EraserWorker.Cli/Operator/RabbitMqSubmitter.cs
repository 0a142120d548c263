using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using EraserWorker.Cli.Output;
using EraserWorker.Contracts;
using RabbitMQ.Client;
using RabbitMQ.Client.Events;
using RabbitMQ.Client.Exceptions;

namespace EraserWorker.Cli.Operator;

/// <summary>The event that answered a request: the exchange it came from and its JSON body.</summary>
public sealed record SubmitOutcome(string Exchange, JsonObject Body)
{
    public bool Completed => Exchange == ExchangeNames.UnlearningCompleted;
}

/// <summary>
/// Publishes an <see cref="UnlearningRequested"/> as plain JSON with RabbitMQ.Client — exactly what any non-.NET
/// system does (SPEC §3): exchange <c>eraser.unlearning-requested</c>, <c>content_type: application/json</c>,
/// persistent, publisher-confirmed and <c>mandatory</c> (a request that no queue would receive is reported, not lost
/// silently). Optionally waits for the completion or failure event of that request.
/// </summary>
public sealed class RabbitMqSubmitter : IAsyncDisposable
{
    private readonly IConnection _connection;
    private readonly IChannel _channel;
    private readonly CliTransportOptions _options;
    private TaskCompletionSource<SubmitOutcome>? _outcome;
    private string? _awaitedRequestId;

    private RabbitMqSubmitter(IConnection connection, IChannel channel, CliTransportOptions options)
    {
        _connection = connection;
        _channel = channel;
        _options = options;
    }

    public static async Task<RabbitMqSubmitter> ConnectAsync(CliTransportOptions options, CancellationToken cancellation)
    {
        var factory = new ConnectionFactory
        {
            HostName = options.Host,
            Port = options.Port,
            VirtualHost = options.VirtualHost,
            UserName = options.Username,
            Password = options.Password,
            ClientProvidedName = "eraser-cli",
            AutomaticRecoveryEnabled = false,
            RequestedConnectionTimeout = TimeSpan.FromSeconds(15),
        };
        if (options.UseTls)
            factory.Ssl = new SslOption { Enabled = true, ServerName = options.Host };
        IConnection connection;
        try
        {
            connection = await factory.CreateConnectionAsync(cancellation);
        }
        catch (BrokerUnreachableException e)
        {
            throw new CliFailure($"cannot connect to RabbitMQ at {options.Describe()} as '{options.Username}': {Innermost(e)}", e);
        }
        try
        {
            var channel = await connection.CreateChannelAsync(
                new CreateChannelOptions(publisherConfirmationsEnabled: true, publisherConfirmationTrackingEnabled: true),
                cancellation);
            return new RabbitMqSubmitter(connection, channel, options);
        }
        catch
        {
            await connection.DisposeAsync();
            throw;
        }
    }

    /// <summary>
    /// Declares an exclusive, auto-delete queue bound to <c>eraser.unlearning-completed</c> and
    /// <c>eraser.unlearning-failed</c> and starts consuming it, looking for events of <paramref name="requestId"/>.
    /// Call before <see cref="PublishAsync"/> so that no answer can be missed.
    /// </summary>
    public async Task ListenForAsync(string requestId, CancellationToken cancellation)
    {
        _awaitedRequestId = requestId;
        _outcome = new TaskCompletionSource<SubmitOutcome>(TaskCreationOptions.RunContinuationsAsynchronously);
        foreach (var exchange in new[] { ExchangeNames.UnlearningCompleted, ExchangeNames.UnlearningFailed })
            await DeclareExchangeAsync(exchange, cancellation);
        var queue = await _channel.QueueDeclareAsync("", durable: false, exclusive: true, autoDelete: true, cancellationToken: cancellation);
        foreach (var exchange in new[] { ExchangeNames.UnlearningCompleted, ExchangeNames.UnlearningFailed })
            await _channel.QueueBindAsync(queue.QueueName, exchange, "", cancellationToken: cancellation);
        var consumer = new AsyncEventingBasicConsumer(_channel);
        consumer.ReceivedAsync += (_, delivery) =>
        {
            if (TryMatch(delivery.Exchange, delivery.Body.Span, out var outcome))
                _outcome.TrySetResult(outcome);
            return Task.CompletedTask;
        };
        await _channel.BasicConsumeAsync(queue.QueueName, autoAck: true, consumer, cancellation);
        // A lost connection or closed channel ends the wait at once instead of at the timeout.
        _channel.ChannelShutdownAsync += (_, args) =>
        {
            _outcome.TrySetException(new CliFailure(
                $"the connection to RabbitMQ at {_options.Describe()} closed while waiting for request {requestId}: {args.ReplyText} ({args.ReplyCode}); the request was delivered and may still be processed."));
            return Task.CompletedTask;
        };
    }

    private bool TryMatch(string exchange, ReadOnlySpan<byte> body, out SubmitOutcome outcome)
    {
        outcome = null!;
        try
        {
            if (JsonNode.Parse(body) is JsonObject json
                && json.FirstOrDefault(p => string.Equals(p.Key, "requestId", StringComparison.OrdinalIgnoreCase)).Value is JsonValue id
                && id.TryGetValue(out string? value) && value == _awaitedRequestId)
            {
                outcome = new SubmitOutcome(exchange, json);
                return true;
            }
        }
        catch (JsonException)
        {
            // Not a SPEC §3 body (e.g. another publisher's envelope): not ours.
        }
        return false;
    }

    /// <summary>Publishes the request (persistent, application/json, mandatory) and waits for the broker's confirm.</summary>
    public async Task PublishAsync(UnlearningRequested request, CancellationToken cancellation)
    {
        await DeclareExchangeAsync(ExchangeNames.UnlearningRequested, cancellation);
        var properties = new BasicProperties
        {
            ContentType = "application/json",
            DeliveryMode = DeliveryModes.Persistent,
        };
        try
        {
            await _channel.BasicPublishAsync(ExchangeNames.UnlearningRequested, "", mandatory: true, properties,
                ContractJson.SerializeToUtf8Bytes(request), cancellation);
        }
        catch (PublishException e) when (e.IsReturn)
        {
            throw new CliFailure($"no queue is bound to exchange '{ExchangeNames.UnlearningRequested}' at {_options.Describe()}, so nothing would receive the request and it was not delivered: start the worker (it binds its queue at start-up) and submit again.", e);
        }
        catch (PublishException e)
        {
            throw new CliFailure($"RabbitMQ at {_options.Describe()} refused the request (negative acknowledgement); it was not delivered.", e);
        }
    }

    /// <summary>The answer to the request given to <see cref="ListenForAsync"/>, or null after <paramref name="timeout"/>.</summary>
    public async Task<SubmitOutcome?> WaitAsync(TimeSpan timeout, CancellationToken cancellation)
    {
        var outcome = _outcome ?? throw new InvalidOperationException("ListenForAsync was not called.");
        try
        {
            return await outcome.Task.WaitAsync(timeout, cancellation);
        }
        catch (TimeoutException)
        {
            return null;
        }
    }

    /// <summary>Durable fanout, not auto-deleted, no arguments: what the worker (MassTransit) declares, so the declaration
    /// is idempotent whichever side comes first.</summary>
    private Task DeclareExchangeAsync(string name, CancellationToken cancellation) =>
        _channel.ExchangeDeclareAsync(name, ExchangeType.Fanout, durable: true, autoDelete: false, cancellationToken: cancellation);

    private static string Innermost(Exception e)
    {
        while (e.InnerException is not null)
            e = e.InnerException;
        return e.Message;
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            if (_channel.IsOpen)
                await _channel.CloseAsync();
            if (_connection.IsOpen)
                await _connection.CloseAsync();
        }
        catch (Exception e) when (e is AlreadyClosedException or OperationInterruptedException or IOException or TimeoutException)
        {
        }
        await _channel.DisposeAsync();
        await _connection.DisposeAsync();
    }
}

/// <summary>Helpers shared by the submit command and its tests.</summary>
public static class SubmitText
{
    /// <summary>The body as one line of compact JSON.</summary>
    public static string Compact(JsonNode node) => OperatorJson.Line(node);

    /// <summary>Reads sample ids: comma-separated values (repeatable) and/or a file with one id per line.</summary>
    public static List<string> ParseSampleIds(IEnumerable<string> values, string? file)
    {
        var ids = new List<string>();
        foreach (var value in values)
            ids.AddRange(value.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries));
        if (file is not null)
        {
            if (!File.Exists(file))
                throw new CliFailure($"the sample file '{file}' does not exist.");
            ids.AddRange(File.ReadLines(file, Encoding.UTF8).Select(l => l.TrimEnd('\r')).Where(l => l.Length > 0));
        }
        return ids.Distinct(StringComparer.Ordinal).ToList();
    }

    /// <summary>Reads text replacements: JSONL, one <c>{"id", "prompt", "response"}</c> object (strings) a line, blank
    /// lines skipped. Only the shape is checked here; <see cref="RequestValidation.Validate"/> checks the rest.</summary>
    public static List<TextReplacement> ParseReplacements(string file)
    {
        if (!File.Exists(file))
            throw new CliFailure($"the replacements file '{file}' does not exist.");
        var result = new List<TextReplacement>();
        int number = 0;
        foreach (var line in File.ReadLines(file, Encoding.UTF8))
        {
            number++;
            if (string.IsNullOrWhiteSpace(line))
                continue;
            string where = $"{Path.GetFileName(file)}:{number}";
            JsonObject o;
            try
            {
                o = JsonNode.Parse(line) as JsonObject ?? throw new CliFailure($"{where}: not a JSON object.");
            }
            catch (JsonException e)
            {
                throw new CliFailure($"{where}: not valid JSON ({e.Message}).", e);
            }
            string Text(string key) => o[key] is JsonValue v && v.TryGetValue(out string? s) ? s
                : throw new CliFailure($"{where}: '{key}' must be a string (a line is {{\"id\", \"prompt\", \"response\"}}).");
            var unknown = o.Select(p => p.Key).Where(k => k is not ("id" or "prompt" or "response")).ToList();
            if (unknown.Count > 0)
                throw new CliFailure($"{where}: unknown field(s) {string.Join(", ", unknown)} (a line is {{\"id\", \"prompt\", \"response\"}}).");
            result.Add(new TextReplacement(Text("id"), Text("prompt"), Text("response")));
        }
        if (result.Count == 0)
            throw new CliFailure($"the replacements file '{file}' has no samples.");
        return result;
    }
}
