namespace EraserWorker.Contracts;

/// <summary>
/// The file names of SPEC §2 and §4 that every party relies on — producers of adapters and caches, the worker, the store
/// and the consumers of <c>adapterUri</c> — declared once.
/// </summary>
public static class StoredFileNames
{
    /// <summary>The PEFT adapter configuration (copied byte for byte into every version).</summary>
    public const string AdapterConfig = "adapter_config.json";

    /// <summary>The PEFT adapter weights.</summary>
    public const string AdapterWeights = "adapter_model.safetensors";

    /// <summary>The index of a gradient cache or replacement set (<c>eraser.gradcache/v1</c>); written last.</summary>
    public const string CacheIndex = "cache.json";

    /// <summary>The manifest of a version: a version is complete iff it exists.</summary>
    public const string Manifest = "manifest.json";

    /// <summary>An adapter's current version.</summary>
    public const string Head = "head.json";
}
