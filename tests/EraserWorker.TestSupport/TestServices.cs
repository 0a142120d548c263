namespace EraserWorker.Tests.Infrastructure;

/// <summary>
/// Where the integration tests find the real services that <c>scripts/test.sh</c> starts. A missing service
/// makes the test FAIL (with a message saying how to start it), never skip silently — unless
/// <c>ERASER_TEST_ALLOW_MISSING_SERVICES=1</c>, in which case the test is reported as skipped.
/// </summary>
public static class TestServices
{
    /// <summary>Azurite (or Azure) connection string.</summary>
    public const string AzuriteVariable = "ERASER_TEST_AZURITE";

    /// <summary>AMQP URI of RabbitMQ, e.g. <c>amqp://guest:guest@127.0.0.1:5672/</c>.</summary>
    public const string RabbitMqVariable = "ERASER_TEST_RABBITMQ";

    /// <summary>Set to 1 to skip (instead of fail) tests whose service is not configured.</summary>
    public const string AllowMissingVariable = "ERASER_TEST_ALLOW_MISSING_SERVICES";

    /// <summary>True when missing services may skip tests.</summary>
    public static bool AllowMissing => Environment.GetEnvironmentVariable(AllowMissingVariable) == "1";

    /// <summary>The Azurite connection string; fails or skips the calling test when it is not configured.</summary>
    public static string RequireAzurite() => Require(AzuriteVariable, "Azurite (blob storage)");

    /// <summary>The RabbitMQ URI; fails or skips the calling test when it is not configured.</summary>
    public static string RequireRabbitMq() => Require(RabbitMqVariable, "RabbitMQ");

    private static string Require(string variable, string service)
    {
        string? value = Environment.GetEnvironmentVariable(variable);
        if (!string.IsNullOrWhiteSpace(value))
            return value;
        string message = $"{service} is required but {variable} is not set. Run the tests with scripts/test.sh, which starts " +
                         $"RabbitMQ and Azurite and sets it (or: scripts/services.sh start && eval \"$(scripts/services.sh env)\"). " +
                         $"Set {AllowMissingVariable}=1 to skip these tests instead.";
        if (AllowMissing)
            throw new SkipTestException(message);
        throw new InvalidOperationException(message);
    }
}

/// <summary>
/// Thrown to skip a test at run time; tests marked <see cref="ServiceFactAttribute"/> /
/// <see cref="ServiceTheoryAttribute"/> report it as skipped (a plain [Fact] would report a failure).
/// </summary>
public sealed class SkipTestException(string reason) : Exception(Marker + reason)
{
    /// <summary>Prefix of the message (also recognised by xunit v3 runners as a dynamic skip).</summary>
    public const string Marker = "$XunitDynamicSkip$";
}

/// <summary>A temporary folder deleted on dispose.</summary>
public sealed class TempDirectory : IDisposable
{
    /// <summary>Creates an empty folder under the system temp folder.</summary>
    public TempDirectory(string? prefix = null)
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"{prefix ?? "eraser-test"}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path);
    }

    /// <summary>The folder.</summary>
    public string Path { get; }

    /// <summary>A sub-folder (created).</summary>
    public string Sub(string name)
    {
        string p = System.IO.Path.Combine(Path, name);
        Directory.CreateDirectory(p);
        return p;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
        }
        catch (UnauthorizedAccessException)
        {
        }
    }
}
