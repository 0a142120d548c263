namespace EraserWorker.Storage;

/// <summary>Base of the adapter store's domain errors.</summary>
public class AdapterStoreException : Exception
{
    /// <summary>Creates the exception.</summary>
    public AdapterStoreException(string adapterId, string message, Exception? inner = null)
        : base(message, inner) => AdapterId = adapterId;

    /// <summary>The adapter concerned.</summary>
    public string AdapterId { get; }
}

/// <summary>No adapter with this id is registered (it has no <c>head.json</c>).</summary>
public sealed class AdapterNotFoundException(string adapterId)
    : AdapterStoreException(adapterId, $"Adapter '{adapterId}' is not registered.");

/// <summary><see cref="AdapterStore.RegisterAsync"/> found the adapter already registered.</summary>
public sealed class AdapterAlreadyRegisteredException(string adapterId, Exception? inner = null)
    : AdapterStoreException(adapterId, $"Adapter '{adapterId}' is already registered.", inner);

/// <summary>The version already exists, complete (with its manifest): versions are written once.</summary>
public sealed class VersionExistsException(string adapterId, int version, Exception? inner = null)
    : AdapterStoreException(adapterId, $"Version {version} of adapter '{adapterId}' already exists.", inner)
{
    /// <summary>The version.</summary>
    public int Version { get; } = version;
}

/// <summary>The version does not exist or is incomplete (no manifest).</summary>
public sealed class VersionNotFoundException(string adapterId, int version)
    : AdapterStoreException(adapterId, $"Version {version} of adapter '{adapterId}' does not exist (or is incomplete).")
{
    /// <summary>The version.</summary>
    public int Version { get; } = version;
}

/// <summary>
/// Another writer is writing this version (or registering this adapter, version 0) right now: its claim is
/// younger than <see cref="StorageOptions.VersionClaimTimeout"/>, or it took ours over. Reload the head and
/// retry later, or write under another version number.
/// </summary>
public sealed class VersionConflictException(string adapterId, int version, string detail, Exception? inner = null)
    : AdapterStoreException(adapterId, $"Version {version} of adapter '{adapterId}' is being written by another writer: {detail}", inner)
{
    /// <summary>The version.</summary>
    public int Version { get; } = version;
}

/// <summary>A replacement set of this name already exists (complete) for the adapter.</summary>
public sealed class ReplacementsExistException(string adapterId, string name, Exception? inner = null)
    : AdapterStoreException(adapterId, $"Replacement set '{name}' of adapter '{adapterId}' already exists.", inner)
{
    /// <summary>The set's name.</summary>
    public string Name { get; } = name;
}

/// <summary>The replacement set named by a replacements URI does not exist or is incomplete (no <c>cache.json</c>).</summary>
public sealed class ReplacementsNotFoundException(string adapterId, string replacementsUri)
    : AdapterStoreException(adapterId, $"Replacement set '{replacementsUri}' does not exist (or is incomplete).")
{
    /// <summary>The URI.</summary>
    public string ReplacementsUri { get; } = replacementsUri;
}

/// <summary>
/// The blob service refused an operation for lack of permission (HTTP 403): the credential (SAS, identity, key) does not
/// allow it. Not retried by the store; the message names the operation, the blob and what the worker needs, never the
/// credential.
/// </summary>
public sealed class StorageAccessDeniedException(string operation, string blobOrPrefix, string container, string? errorCode, Exception? inner = null)
    : UnauthorizedAccessException(
        $"Blob storage refused to {operation} '{blobOrPrefix}' in container '{container}' (403 {errorCode ?? "Forbidden"}): the credential lacks that permission. " +
        "The worker and the eraser CLI need read, create, write, delete and list on the blobs of this container " +
        "(a container SAS with sp=rcwdl, or Storage Blob Data Contributor on the container); creating the container needs more, " +
        "so create it when provisioning and set Eraser:Storage:CreateContainer=false.", inner)
{
    /// <summary>What was refused: <c>read</c>, <c>write</c>, <c>list</c>, <c>delete</c>, <c>create the container</c>.</summary>
    public string Operation { get; } = operation;

    /// <summary>The blob (or listing prefix) concerned.</summary>
    public string Blob { get; } = blobOrPrefix;

    /// <summary>The service's error code (e.g. <c>AuthorizationPermissionMismatch</c>), if any.</summary>
    public string? ErrorCode { get; } = errorCode;
}
