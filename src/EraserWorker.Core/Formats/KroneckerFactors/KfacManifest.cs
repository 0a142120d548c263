using System.Text.Json;
using System.Text.Json.Serialization;

namespace EraserWorker.Core.Formats.KroneckerFactors;

/// <summary><c>kfac.json</c> of an <c>eraser.kfac/v1</c> folder (docs/formats/kfac.md).</summary>
public sealed record KfacManifest(
    [property: JsonPropertyName("format")] string Format,
    [property: JsonPropertyName("samples")] long Samples,
    [property: JsonPropertyName("parameterCount")] long ParameterCount,
    [property: JsonPropertyName("dampingHint")] double DampingHint,
    [property: JsonPropertyName("modules")] IReadOnlyList<KfacManifestModule> Modules,
    [property: JsonPropertyName("file")] string File,
    [property: JsonPropertyName("sha256")] string Sha256)
{
    public const string FormatName = "eraser.kfac/v1";
    public const string FileName = "kfac.json";
    public const string FactorsFileName = "factors.safetensors";

    internal static readonly JsonSerializerOptions Json = new() { WriteIndented = true };
}

/// <summary>One module: the cache parameter it is, its dims and where its slice starts in a gradient row.</summary>
public sealed record KfacManifestModule(
    [property: JsonPropertyName("parameter")] string Parameter,
    [property: JsonPropertyName("outDim")] int OutDim,
    [property: JsonPropertyName("inDim")] int InDim,
    [property: JsonPropertyName("offset")] long Offset);
