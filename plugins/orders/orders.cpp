// Example plugin "orders": an order-processing diamond. fetch prices an order; charge and reserve
// run side by side; ship joins them. charge fails transiently on its first attempt (a simulated
// payment-gateway time-out) and succeeds when retried; an unknown SKU fails permanently.

#include <flowreg/sdk.hpp>
#include <map>

using flowreg::sdk::Context;
using flowreg::sdk::json;
using flowreg::sdk::permanent_error;
using flowreg::sdk::retryable_error;

namespace {

const std::map<std::string, std::int64_t> kPriceCents = {
    {"book", 1250}, {"pen", 199}, {"lamp", 3999}, {"mug", 899}};

// {"order_id": "o-1", "items": [{"sku": "book", "qty": 2}]} -> the priced order
json fetch(const json& input) {
  if (!input.contains("order_id") || !input["order_id"].is_string())
    throw permanent_error("fetch: the input needs an order_id string");
  json items = input.value("items", json::array({{{"sku", "book"}, {"qty", 1}}}));
  std::int64_t total = 0;
  for (auto& item : items) {
    const std::string sku = item.value("sku", "");
    auto price = kPriceCents.find(sku);
    if (price == kPriceCents.end()) throw permanent_error("fetch: unknown SKU '" + sku + "'");
    const std::int64_t qty = item.value("qty", 1);
    if (qty <= 0) throw permanent_error("fetch: quantity of '" + sku + "' must be positive");
    item["price_cents"] = price->second;
    total += price->second * qty;
  }
  return {{"order_id", input["order_id"]}, {"items", items}, {"total_cents", total}};
}

// {"fetch": order} -> a payment; fails transiently on the first attempt.
json charge(const json& input, const Context& context) {
  const json& order = input.at("fetch");
  if (context.attempt == 1)
    throw retryable_error("charge: payment gateway timed out (simulated on the first attempt)");
  return {{"payment_id", "pay-" + order["order_id"].get<std::string>()},
          {"amount_cents", order["total_cents"]},
          {"attempt", context.attempt}};
}

// {"fetch": order} -> the reserved quantities
json reserve(const json& input) {
  const json& order = input.at("fetch");
  std::int64_t units = 0;
  for (const auto& item : order["items"]) units += item.value("qty", 1);
  return {{"reservation_id", "res-" + order["order_id"].get<std::string>()}, {"units", units}};
}

// {"charge": payment, "reserve": reservation} -> the shipment
json ship(const json& input) {
  const json& payment = input.at("charge");
  const json& reservation = input.at("reserve");
  return {{"shipment_id", "ship-" + payment["payment_id"].get<std::string>().substr(4)},
          {"paid_cents", payment["amount_cents"]},
          {"units", reservation["units"]},
          {"status", "shipped"}};
}

}  // namespace

FLOWREG_PLUGIN(orders) {
  plugin.handler("fetch", fetch);
  plugin.handler("charge", charge);
  plugin.handler("reserve", reserve);
  plugin.handler("ship", ship);
}
