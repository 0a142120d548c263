using System.CommandLine;
using System.ComponentModel.DataAnnotations;
using EraserWorker.Cli.Output;
using EraserWorker.Contracts;
using EraserWorker.Storage;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;

namespace EraserWorker.Cli.Operator;

/// <summary>
/// The worker's configuration (SPEC §5), read the way the worker reads it: <c>appsettings.json</c> beside the
/// <c>eraser</c> executable if present, then the file given with <c>--config</c> (e.g. the worker's own
/// appsettings.json), then environment variables with <c>__</c> as separator (<c>Eraser__Storage__Kind</c>), each
/// overriding the one before.
/// </summary>
public static class OperatorSettings
{
    /// <summary>Name of the settings file looked for beside the executable.</summary>
    public const string DefaultFileName = "appsettings.json";

    /// <summary><c>--config FILE</c>; recursive, so it is accepted after any sub-command.</summary>
    public static Option<string?> CreateConfigOption() => new("--config")
    {
        Description = "JSON settings file with the worker's keys (e.g. its appsettings.json); environment variables (Eraser__Storage__Kind, …) still override it.",
        Recursive = true,
    };

    /// <summary>Reads the configuration; a missing or malformed <paramref name="configFile"/> fails with one line.</summary>
    public static IConfigurationRoot Load(string? configFile)
    {
        var builder = new ConfigurationBuilder();
        string beside = Path.Combine(AppContext.BaseDirectory, DefaultFileName);
        if (File.Exists(beside))
            AddJson(builder, beside, beside);
        if (configFile is not null)
        {
            string full = Path.GetFullPath(configFile);
            if (!File.Exists(full))
                throw new CliFailure($"the settings file '{configFile}' does not exist.");
            AddJson(builder, full, configFile);
        }
        builder.AddEnvironmentVariables();
        return builder.Build();
    }

    private static void AddJson(ConfigurationBuilder builder, string fullPath, string shown)
    {
        // Parse now, so that a malformed file is reported with its name (the provider only says "Could not parse").
        try
        {
            using var stream = File.OpenRead(fullPath);
            using var _ = System.Text.Json.JsonDocument.Parse(stream, new System.Text.Json.JsonDocumentOptions
            {
                CommentHandling = System.Text.Json.JsonCommentHandling.Skip,
                AllowTrailingCommas = true,
            });
        }
        catch (System.Text.Json.JsonException e)
        {
            throw new CliFailure($"the settings file '{shown}' is not valid JSON: {e.Message}", e);
        }
        builder.AddJsonFile(fullPath, optional: false, reloadOnChange: false);
    }

    /// <summary>
    /// The adapter store of <c>Eraser:Storage</c>, built and validated exactly as in the worker
    /// (<see cref="StorageServiceCollectionExtensions.AddEraserStorage"/>: data annotations and
    /// <see cref="StorageOptionsValidator"/>). Invalid settings fail with one line naming the keys.
    /// </summary>
    /// <param name="configuration">The settings.</param>
    /// <param name="mustExist">For commands that only read or that need a registered adapter: a folder store whose
    /// root does not exist fails (instead of being created empty, hiding a wrong <c>Eraser:Storage:Root</c>).</param>
    public static StoreHandle OpenStore(IConfiguration configuration, bool mustExist = false)
    {
        var services = new ServiceCollection();
        services.AddEraserStorage(configuration);
        var provider = services.BuildServiceProvider();
        try
        {
            StorageOptions options;
            try
            {
                options = provider.GetRequiredService<IOptions<StorageOptions>>().Value;
            }
            catch (OptionsValidationException e)
            {
                throw new CliFailure("invalid storage configuration: " + string.Join(" ", e.Failures.Select(CliFailures.Plain)), e);
            }
            catch (InvalidOperationException e)
            {
                // The binder's conversion errors, e.g. "Failed to convert configuration value 'X' at 'Eraser:Storage:Kind' …".
                throw new CliFailure("invalid storage configuration: " + e.Message, e);
            }
            if (mustExist && options.Kind == StorageKind.FileSystem && !Directory.Exists(options.Root))
                throw new CliFailure($"the store folder '{Path.GetFullPath(options.Root)}' (Eraser:Storage:Root) does not exist: no adapter is registered there.");
            return new StoreHandle(provider, options, provider.GetRequiredService<AdapterStore>());
        }
        catch
        {
            provider.Dispose();
            throw;
        }
    }

    /// <summary><c>Eraser:Transport</c>, bound and checked like the worker's <c>TransportOptions</c>.</summary>
    public static CliTransportOptions Transport(IConfiguration configuration)
    {
        CliTransportOptions options;
        try
        {
            options = configuration.GetSection(CliTransportOptions.SectionName).Get<CliTransportOptions>() ?? new CliTransportOptions();
        }
        catch (InvalidOperationException e)
        {
            throw new CliFailure("invalid transport configuration: " + e.Message, e);
        }
        var results = new List<ValidationResult>();
        if (!Validator.TryValidateObject(options, new ValidationContext(options), results, validateAllProperties: true))
            throw new CliFailure("invalid transport configuration: " + string.Join(" ", results.Select(r => r.ErrorMessage)));
        return options;
    }

    /// <summary><c>Eraser:Worker:MaxReplacementTextLength</c> (default 1 Mi characters): the worker's limit on the text of
    /// one request's replacements.</summary>
    public static int MaxReplacementTextLength(IConfiguration configuration)
    {
        const string key = "Eraser:Worker:MaxReplacementTextLength";
        int value;
        try
        {
            value = configuration.GetValue(key, RequestValidation.DefaultMaxReplacementTextLength);
        }
        catch (InvalidOperationException e)
        {
            throw new CliFailure($"invalid configuration: {e.Message}", e);
        }
        return value >= 1
            ? value
            : throw new CliFailure($"invalid configuration: {key} must be at least 1 (got {value}).");
    }

    /// <summary><c>Eraser:Worker:MaxSampleIdsPerRequest</c> (default 10000): the worker's per-request limit, so that
    /// <c>submit</c> refuses what the worker would fail as <c>InvalidRequest</c>.</summary>
    public static int MaxSampleIdsPerRequest(IConfiguration configuration)
    {
        const string key = "Eraser:Worker:MaxSampleIdsPerRequest";
        int value;
        try
        {
            value = configuration.GetValue(key, 10_000);
        }
        catch (InvalidOperationException e)
        {
            throw new CliFailure($"invalid configuration: {e.Message}", e);
        }
        return value is >= 1 and <= 1_000_000
            ? value
            : throw new CliFailure($"invalid configuration: {key} must be between 1 and 1000000 (got {value}).");
    }
}

/// <summary>The adapter store and what it was built from; dispose after use.</summary>
public sealed class StoreHandle(ServiceProvider provider, StorageOptions options, AdapterStore store) : IDisposable
{
    public StorageOptions Options { get; } = options;

    public AdapterStore Store { get; } = store;

    /// <summary>Where the store is, for status lines: the folder or container URI of <c>adapters/</c>.</summary>
    public string Location => Store.Location;

    public void Dispose() => provider.Dispose();
}

/// <summary>Transport kinds of <c>Eraser:Transport:Kind</c> (the worker's names).</summary>
public enum CliTransportKind
{
    InMemory,
    RabbitMq,
}

/// <summary>
/// <c>Eraser:Transport</c> (SPEC §5), the same keys and defaults as the worker's <c>TransportOptions</c>. The CLI does
/// not reference the worker host: it publishes with RabbitMQ.Client directly, as plain JSON, like any non-.NET client.
/// </summary>
public sealed class CliTransportOptions
{
    public const string SectionName = "Eraser:Transport";

    public CliTransportKind Kind { get; set; } = CliTransportKind.InMemory;

    [Required(AllowEmptyStrings = false, ErrorMessage = "Eraser:Transport:Host must be set.")]
    public string Host { get; set; } = "localhost";

    [Range(1, 65535, ErrorMessage = "Eraser:Transport:Port must be between 1 and 65535.")]
    public int Port { get; set; } = 5672;

    [Required(AllowEmptyStrings = false, ErrorMessage = "Eraser:Transport:VirtualHost must be set.")]
    public string VirtualHost { get; set; } = "/";

    public string Username { get; set; } = "guest";

    public string Password { get; set; } = "guest";

    public bool UseTls { get; set; }

    /// <summary>host:port/vhost, for messages (never the credentials).</summary>
    public string Describe() => $"{(UseTls ? "amqps" : "amqp")}://{Host}:{Port}/{Uri.EscapeDataString(VirtualHost)}";
}
