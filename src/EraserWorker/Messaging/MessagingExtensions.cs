using EraserWorker.Contracts;
using EraserWorker.Hosting;
using EraserWorker.Components.Messaging;
using MassTransit;
using Microsoft.Extensions.Options;

namespace EraserWorker.Messaging;

public static class MessagingExtensions
{
    /// <summary>
    /// MassTransit on the configured transport. Every contract maps to its SPEC §3 exchange name, and events go
    /// out as plain camelCase JSON (content type application/json) so that non-.NET consumers can read them.
    /// </summary>
    public static IServiceCollection AddEraserMessaging(this IServiceCollection services, IConfiguration configuration,
        Action<IBusRegistrationConfigurator>? extra = null)
    {
        services.AddOptions<TransportOptions>().Bind(configuration.GetSection(TransportOptions.SectionName)).ValidateDataAnnotations().ValidateOnStart();
        services.AddMassTransit(x =>
        {
            x.AddConsumer<UnlearningRequestedConsumer, UnlearningRequestedConsumerDefinition>();
            // MassTransit 8.4+ reports usage telemetry to an outside host by default. A service that handles erasure
            // requests sends nothing anywhere but its own broker and store, so it is off (spec §5).
            x.ConfigureUsageTelemetryOptions(o => o.Enabled = false);
            extra?.Invoke(x);
            var transport = configuration.GetSection(TransportOptions.SectionName).Get<TransportOptions>() ?? new TransportOptions();
            if (transport.Kind == TransportKind.RabbitMq)
                x.UsingRabbitMq((context, cfg) =>
                {
                    var o = context.GetRequiredService<IOptions<TransportOptions>>().Value;
                    cfg.Host(o.Host, (ushort)o.Port, o.VirtualHost, h =>
                    {
                        h.Username(o.Username);
                        h.Password(o.Password);
                        if (o.UseTls)
                            h.UseSsl(s => s.ServerName = o.Host);
                    });
                    ConfigureTopology(cfg);
                    // SPEC §3: the outgoing exchanges exist from start-up, before the first event, so that
                    // subscribers in any language can bind their queues to them.
                    cfg.DeployPublishTopology = true;
                    cfg.AddPublishMessageTypes([typeof(UnlearningCompleted), typeof(UnlearningFailed), typeof(AdapterVersionPublished)]);
                    cfg.ConfigureEndpoints(context);
                });
            else
                x.UsingInMemory((context, cfg) =>
                {
                    ConfigureTopology(cfg);
                    cfg.ConfigureEndpoints(context);
                });
        });
        return services;
    }

    /// <summary>SPEC §3's exchange names and plain JSON on the wire, for the worker and for .NET publishers alike.</summary>
    public static void ConfigureTopology(IBusFactoryConfigurator cfg)
    {
        cfg.Message<UnlearningRequested>(m => m.SetEntityName(ExchangeNames.UnlearningRequested));
        cfg.Message<UnlearningCompleted>(m => m.SetEntityName(ExchangeNames.UnlearningCompleted));
        cfg.Message<UnlearningFailed>(m => m.SetEntityName(ExchangeNames.UnlearningFailed));
        cfg.Message<AdapterVersionPublished>(m => m.SetEntityName(ExchangeNames.AdapterVersionPublished));
        cfg.UseRawJsonSerializer(RawSerializerOptions.AnyMessageType, isDefault: true);
        cfg.ConfigureJsonSerializerOptions(o =>
        {
            o.PropertyNamingPolicy = ContractJson.Options.PropertyNamingPolicy;
            return o;
        });
    }
}

