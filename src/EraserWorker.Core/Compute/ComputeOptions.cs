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

/// <summary>Where the curvature rows are held between solves.</summary>
public enum RowResidency
{
    /// <summary>Resident when rows, Gram and buffers fit the memory budget, else streamed; the engine says why.</summary>
    Auto,

    /// <summary>All rows on the compute device, in the cache's storage dtype (float64 on a GPU in Float64 precision).</summary>
    Resident,

    /// <summary>Rows read from the cache files for every product, in double-buffered blocks (reads overlap compute).</summary>
    Streamed,
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

    /// <summary>
    /// Memory one warm adapter may hold on the compute device, in bytes: its curvature rows when resident, the
    /// float64 Gram, and the read buffers (double-buffered row blocks, Gram panels). Decides <see cref="Residency"/>
    /// <c>Auto</c>, and whether the <c>auto</c> solver may use the dense direct solver.
    /// </summary>
    public long MemoryBudgetBytes { get; set; } = 4L << 30;

    /// <summary>Most rows read from the cache per chunk (resident loading) or per streamed block.</summary>
    public int RowsPerChunk { get; set; } = 256;

    /// <summary>Where the curvature rows live between solves: <c>Auto</c> (resident when rows, Gram and buffers fit
    /// <see cref="MemoryBudgetBytes"/>, else streamed), <c>Resident</c> or <c>Streamed</c>.</summary>
    public RowResidency Residency { get; set; } = RowResidency.Auto;

    /// <summary>Keep the Gram as a derived, checksummed file in the cache folder (<c>derived/gram.safetensors</c>) and
    /// reuse it when it matches the rows, so that a restarted worker does not rebuild it.</summary>
    public bool PersistGram { get; set; } = true;

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
        if (!Enum.IsDefined(Residency))
            problems.Add($"{nameOf(nameof(Residency))} must be Auto, Resident or Streamed (got {Residency}).");
        if (MemoryBudgetBytes < MinMemoryBudgetBytes)
            problems.Add($"{nameOf(nameof(MemoryBudgetBytes))} must be at least {MinMemoryBudgetBytes.ToString(CultureInfo.InvariantCulture)} bytes (1 MiB) (got {MemoryBudgetBytes.ToString(CultureInfo.InvariantCulture)}).");
        if (RowsPerChunk is < 1 or > 1 << 20)
            problems.Add($"{nameOf(nameof(RowsPerChunk))} must be between 1 and {1 << 20} (got {RowsPerChunk}).");
        return problems;
    }
}
