using System.Globalization;
using System.Text.RegularExpressions;

namespace EraserWorker.Core.Compute;

/// <summary>Arithmetic used by the solvers. Storage of the cache is independent (F32/F16/BF16).</summary>
public enum ComputePrecision
{
    /// <summary>Curvature rows held and multiplied in float32; Gram, vectors and reductions in float64.</summary>
    Float32,

    /// <summary>Everything in float64: twice the memory and time, for exactness checks and small problems.</summary>
    Float64,
}

/// <summary>Where and how the influence update is computed (configuration section <c>Eraser:Compute</c>).</summary>
public sealed partial class ComputeOptions
{
    public const string SectionName = "Eraser:Compute";

    /// <summary>The devices <see cref="Device"/> accepts, as documented.</summary>
    public const string DeviceNames = "auto, cpu, cuda or cuda:N";

    /// <summary><c>auto</c> (CUDA when available, else CPU), <c>cpu</c>, <c>cuda</c> or <c>cuda:N</c>.</summary>
    public string Device { get; set; } = "auto";

    public ComputePrecision Precision { get; set; } = ComputePrecision.Float32;

    /// <summary>Smallest <see cref="MemoryBudgetBytes"/> accepted: 1 MiB.</summary>
    public const long MinMemoryBudgetBytes = 1L << 20;

    /// <summary>Memory the <c>auto</c> solver may spend on dense matrices (Gram or P×P), in bytes.</summary>
    public long MemoryBudgetBytes { get; set; } = 4L << 30;

    /// <summary>Rows read from the cache per streamed chunk.</summary>
    public int RowsPerChunk { get; set; } = 256;

    [GeneratedRegex("^(auto|cpu|cuda(:[0-9]+)?)$", RegexOptions.CultureInvariant)]
    private static partial Regex DevicePattern();

    /// <summary>
    /// Every invalid setting as one sentence naming it as the caller calls it (<paramref name="nameOf"/> maps the property
    /// name, e.g. to <c>--device</c> or <c>Eraser:Compute:Device</c>). The worker's start-up validation and the CLI apply
    /// exactly these rules. Empty when the options are usable.
    /// </summary>
    public IReadOnlyList<string> Problems(Func<string, string>? nameOf = null)
    {
        nameOf ??= name => name;
        var problems = new List<string>();
        if (string.IsNullOrEmpty(Device) || !DevicePattern().IsMatch(Device))
            problems.Add($"{nameOf(nameof(Device))} must be {DeviceNames} (got '{Device}').");
        if (!Enum.IsDefined(Precision))
            problems.Add($"{nameOf(nameof(Precision))} must be Float32 or Float64 (got {Precision}).");
        if (MemoryBudgetBytes < MinMemoryBudgetBytes)
            problems.Add($"{nameOf(nameof(MemoryBudgetBytes))} must be at least {MinMemoryBudgetBytes.ToString(CultureInfo.InvariantCulture)} bytes (1 MiB) (got {MemoryBudgetBytes.ToString(CultureInfo.InvariantCulture)}).");
        if (RowsPerChunk is < 1 or > 1 << 20)
            problems.Add($"{nameOf(nameof(RowsPerChunk))} must be between 1 and {1 << 20} (got {RowsPerChunk}).");
        return problems;
    }
}
