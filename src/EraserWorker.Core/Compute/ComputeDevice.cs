using TorchSharp;

namespace EraserWorker.Core.Compute;

public static class ComputeDevice
{
    /// <summary>Resolves a device option; <c>auto</c> takes CUDA when libtorch sees a GPU, else the CPU.</summary>
    public static torch.Device Resolve(string spec)
    {
        spec = string.IsNullOrWhiteSpace(spec) ? "auto" : spec.Trim().ToLowerInvariant();
        if (spec == "auto")
            return torch.cuda.is_available() ? torch.CUDA : torch.CPU;
        if (spec.StartsWith("cuda", StringComparison.Ordinal) && !torch.cuda.is_available())
            throw new InvalidOperationException(
                $"Device '{spec}' was requested but CUDA is not available (this build uses the '{TorchBackendName}' backend, or no GPU is visible).");
        return new torch.Device(spec);
    }

    /// <summary>The libtorch flavour this build links against (set by the TorchBackend build switch).</summary>
    public static string TorchBackendName =>
        typeof(ComputeDevice).Assembly.GetCustomAttributes(typeof(System.Reflection.AssemblyMetadataAttribute), false)
            .OfType<System.Reflection.AssemblyMetadataAttribute>()
            .FirstOrDefault(a => a.Key == "TorchBackend")?.Value ?? "cpu";

    public static torch.ScalarType ScalarType(ComputePrecision precision) =>
        precision == ComputePrecision.Float64 ? torch.ScalarType.Float64 : torch.ScalarType.Float32;
}
