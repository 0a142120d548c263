using System.Text;
using System.Text.Json;
using EraserWorker.Contracts;
using EraserWorker.Components.Observability;
using EraserWorker.Components.Unlearning;
using EraserWorker.Components.Warm;
using MassTransit;
using MassTransit.Transports;

namespace EraserWorker.Components.Messaging;

/// <summary>
/// Receive filter of the request queue that runs before MassTransit deserialises a body: a message larger than
/// <c>Eraser:Worker:MaxMessageBytes</c> is never parsed into a request. It is moved to the dead-letter queue
/// (<c>eraser-unlearning-requested_skipped</c>, reason in the <c>MT-Reason</c> header) and, when its
/// <c>requestId</c> and <c>adapterId</c> can be read by a bounded forward scan of the top-level object (or of the
/// <c>message</c> object of a MassTransit envelope), an <c>InvalidRequest</c> failure is published for it. The filter
/// never throws for a hostile body: an exception here would bypass MassTransit's error pipe and make the broker
/// redeliver the message forever.
/// </summary>
public sealed class MessageSizeLimitFilter(int maxBytes, EraserMetrics metrics, ILogger logger) : IFilter<ReceiveContext>
{
    /// <summary>Longest id value decoded from an oversized body (longer ones are invalid anyway and are cut).</summary>
    private const int MaxIdBytes = 1024;

    public void Probe(ProbeContext context) => context.CreateFilterScope("messageSizeLimit").Add("maxBytes", maxBytes);

    public async Task Send(ReceiveContext context, IPipe<ReceiveContext> next)
    {
        long length = context.Body.Length ?? context.Body.GetBytes().LongLength;
        if (length <= maxBytes)
        {
            await next.Send(context).ConfigureAwait(false);
            return;
        }

        string reason = $"The message body has {length} bytes; Eraser:Worker:MaxMessageBytes allows {maxBytes}.";
        metrics.RequestReceived(null);
        var (requestId, adapterId) = TryReadIds(context.Body.GetBytes());
        string messageId = LogText.Safe(context.TransportHeaders.Get<string>("MessageId") ?? context.GetMessageId()?.ToString());
        logger.LogWarning("Message {MessageId} (requestId {RequestId}, adapterId {AdapterId}) refused: {Reason} Moved to the dead-letter queue.",
            messageId, LogText.Safe(requestId), LogText.Safe(adapterId), reason);
        try
        {
            if (requestId is not null)
            {
                var failure = Failures.Of(new UnlearningRequested(requestId, adapterId ?? "", "", []),
                    FailureCodes.InvalidRequest, reason);
                var endpoint = await context.PublishEndpointProvider.GetPublishSendEndpoint<UnlearningFailed>().ConfigureAwait(false);
                await endpoint.Send(failure, context.CancellationToken).ConfigureAwait(false);
                metrics.RequestFailed(null, FailureCodes.InvalidRequest);
            }
            if (context.TryGetPayload(out IDeadLetterTransport? deadLetter))
                await deadLetter.Send(context, reason).ConfigureAwait(false);
            else
                logger.LogError("No dead-letter transport on the receive context: the oversized message {MessageId} is dropped.", messageId);
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            // Publishing or dead-lettering needs the broker: without it, let the transport redeliver the message later
            // (this filter sees it again then).
            logger.LogWarning(e, "Could not dead-letter the oversized message {MessageId}; it will be redelivered.", messageId);
            throw;
        }
    }

    /// <summary>The string values of <c>requestId</c> and <c>adapterId</c> among the top-level properties of a JSON object
    /// (or of its <c>message</c> object: the MassTransit envelope), read forward without building a document; values
    /// are skipped, never materialised, and nesting is limited to 64 levels. Nulls when not found or not JSON.</summary>
    internal static (string? RequestId, string? AdapterId) TryReadIds(ReadOnlySpan<byte> json)
    {
        string? requestId = null, adapterId = null;
        try
        {
            var reader = new Utf8JsonReader(json, new JsonReaderOptions { MaxDepth = 64 });
            if (!reader.Read() || reader.TokenType != JsonTokenType.StartObject)
                return (null, null);
            int depth = reader.CurrentDepth;
            while (reader.Read())
            {
                if (reader.TokenType == JsonTokenType.EndObject && reader.CurrentDepth == depth)
                    break;
                if (reader.TokenType != JsonTokenType.PropertyName)
                    return (requestId, adapterId);
                bool isRequestId = reader.ValueTextEquals("requestId"u8), isAdapterId = reader.ValueTextEquals("adapterId"u8);
                bool isMessage = reader.ValueTextEquals("message"u8);
                if (!reader.Read())
                    break;
                if ((isRequestId || isAdapterId) && reader.TokenType == JsonTokenType.String && !reader.HasValueSequence)
                {
                    string value = Decode(reader);
                    if (isRequestId)
                        requestId ??= value;
                    else
                        adapterId ??= value;
                    if (requestId is not null && adapterId is not null)
                        break;
                }
                else if (isMessage && reader.TokenType == JsonTokenType.StartObject)
                {
                    depth = reader.CurrentDepth; // descend into the envelope's message
                }
                else
                {
                    reader.Skip();
                }
            }
        }
        catch (JsonException)
        {
            // truncated or malformed after the ids were read (or before): keep what was found
        }
        return (requestId, adapterId);
    }

    private static string Decode(Utf8JsonReader reader)
    {
        if (reader.ValueSpan.Length <= MaxIdBytes)
            return reader.GetString() ?? "";
        // An id this long is invalid anyway: decode a prefix of the raw (escaped) text, to name it in the failure.
        return Encoding.UTF8.GetString(reader.ValueSpan[..MaxIdBytes]);
    }
}
