using System.Text.Json;
using System.Text.Json.Serialization;

namespace EraserWorker.Contracts;

/// <summary>
/// The System.Text.Json settings every component uses for the SPEC §3 bodies: camelCase names, nulls omitted
/// when writing (so an absent <c>replacementsUri</c> is not sent), property names matched case-insensitively
/// and non-nullable / required constructor parameters enforced when reading (a body without
/// <c>requestId</c> throws <see cref="JsonException"/> instead of producing a record with a null id).
/// </summary>
public static class ContractJson
{
    /// <summary>The shared, read-only options.</summary>
    public static JsonSerializerOptions Options { get; } = Create();

    /// <summary>A fresh, mutable copy of <see cref="Options"/> (e.g. to add converters).</summary>
    public static JsonSerializerOptions Create()
    {
        var options = new JsonSerializerOptions(JsonSerializerDefaults.Web);
        ApplyTo(options);
        options.RespectNullableAnnotations = true;
        options.RespectRequiredConstructorParameters = true;
        options.MakeReadOnly(populateMissingResolver: true);
        return options;
    }

    /// <summary>
    /// Applies the naming and null-handling settings to an existing options instance (for example MassTransit's
    /// <c>SystemTextJsonMessageSerializer.Options</c>). It deliberately leaves out the two strictness switches
    /// (<see cref="JsonSerializerOptions.RespectNullableAnnotations"/>,
    /// <see cref="JsonSerializerOptions.RespectRequiredConstructorParameters"/>), which would also apply to
    /// the host library's own envelope types; validate message bodies with <see cref="RequestValidation"/>.
    /// </summary>
    public static void ApplyTo(JsonSerializerOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        options.PropertyNamingPolicy = JsonNamingPolicy.CamelCase;
        options.DictionaryKeyPolicy = JsonNamingPolicy.CamelCase;
        options.PropertyNameCaseInsensitive = true;
        options.DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull;
        options.NumberHandling = JsonNumberHandling.Strict;
        options.ReadCommentHandling = JsonCommentHandling.Disallow;
        options.AllowTrailingCommas = false;
        options.WriteIndented = false;
    }

    /// <summary>Serialises a message with <see cref="Options"/>.</summary>
    public static string Serialize<T>(T message) => JsonSerializer.Serialize(message, Options);

    /// <summary>Serialises a message to UTF-8 with <see cref="Options"/>.</summary>
    public static byte[] SerializeToUtf8Bytes<T>(T message) => JsonSerializer.SerializeToUtf8Bytes(message, Options);

    /// <summary>Deserialises a message with <see cref="Options"/>; throws <see cref="JsonException"/> on a
    /// malformed body, a missing required property or a JSON <c>null</c> body.</summary>
    public static T Deserialize<T>(ReadOnlySpan<byte> utf8Json) =>
        JsonSerializer.Deserialize<T>(utf8Json, Options) ?? throw new JsonException("The message body is null.");

    /// <inheritdoc cref="Deserialize{T}(ReadOnlySpan{byte})"/>
    public static T Deserialize<T>(string json) =>
        JsonSerializer.Deserialize<T>(json, Options) ?? throw new JsonException("The message body is null.");
}
